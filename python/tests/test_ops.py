"""torch.ops.sgdx.*: values against closed forms, schemas and fake implementations
(torch.library.opcheck), and torch.compile around the operators and the optimizers."""
import math

import pytest
import torch
import torch.nn.functional as F

import sgdx


def rsgd_args(dtype=torch.float32):
    params = [torch.randn(5, 3, dtype=dtype), torch.randn(7, dtype=dtype)]
    grads = [torch.randn_like(p) for p in params]
    memory = [torch.randn_like(p) for p in params]
    return params, grads, memory


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_rsgd_step_op_equals_the_rule_with_certain_draws(prob):
    params, grads, memory = rsgd_args(torch.float64)
    want_p = [p - 0.1 * (g + 0.01 * p + prob * m) for p, g, m in zip(params, grads, memory)]
    want_m = [g + 0.01 * p + prob * m for p, g, m in zip(params, grads, memory)]
    sgdx.ops.rsgd_step_(params, grads, memory, [0, 1], [1, 1], [prob, prob], lr=0.1, weight_decay=0.01)
    for p, w in zip(params, want_p):
        torch.testing.assert_close(p, w, rtol=1e-14, atol=1e-14)
    for m, w in zip(memory, want_m):
        torch.testing.assert_close(m, w, rtol=1e-14, atol=1e-14)


def test_elastic_net_prox_op_is_the_closed_form():
    v = torch.tensor([-2.0, -0.05, 0.0, 0.05, 3.0], dtype=torch.float64)
    want = torch.sign(v) * (v.abs() - 0.5 * 0.2).clamp_min(0) / (1 + 0.5 * 0.4)
    sgdx.ops.elastic_net_prox_(v, 0.5, 0.2, 0.4)
    torch.testing.assert_close(v, want, rtol=1e-15, atol=0)


def test_upper_bound_scores_op():
    z, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 4, (6,))
    want = (F.softmax(z, 1) - F.one_hot(y, 4)).norm(dim=1)
    torch.testing.assert_close(sgdx.ops.upper_bound_scores(z, y).double(), want, rtol=1e-6, atol=1e-7)


def test_opcheck_schemas_and_fakes():
    params, grads, memory = rsgd_args()
    torch.library.opcheck(torch.ops.sgdx.rsgd_step_.default,
                          (params, grads, memory, [0, 1], [3, 3], [0.5, 0.5], 0.1, 0.0, 7, True, False),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.sgdx.elastic_net_prox_.default, (torch.randn(8), 0.1, 0.2, 0.3),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.sgdx.upper_bound_scores.default, (torch.randn(5, 3), torch.randint(0, 3, (5,))),
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_traces_the_operator_in_one_graph():
    params, grads, memory = rsgd_args()
    expected = [p.clone() for p in params], [m.clone() for m in memory]
    sgdx.ops.rsgd_step_(expected[0], grads, expected[1], [0, 1], [2, 2], [0.5, 0.5], 0.1, 0.0, 5)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(ps, gs, ms):
        torch.ops.sgdx.rsgd_step_(ps, gs, ms, [0, 1], [2, 2], [0.5, 0.5], 0.1, 0.0, 5, True, False)
        return ps[0].sum()

    step(params, grads, memory)
    for p, e in zip(params, expected[0]):
        assert torch.equal(p, e)


@pytest.mark.parametrize("name", ["RSGD", "GradQueueSGDM"])
def test_compiled_training_step_with_the_optimizer(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    ref = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    ref.load_state_dict(model.state_dict())
    opts = [getattr(sgdx.optim, name)(m.parameters(), lr=0.05) for m in (model, ref)]
    x, y = torch.randn(16, 5), torch.randint(0, 2, (16,))

    def train_step(m, opt):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        return loss

    compiled = torch.compile(train_step, backend="aot_eager")
    for _ in range(3):
        got = compiled(model, opts[0])
        want = train_step(ref, opts[1])
        assert math.isclose(got.item(), want.item(), rel_tol=1e-5)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
