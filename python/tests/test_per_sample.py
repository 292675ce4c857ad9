"""sgdx.PerSampleGradients against torch.func (vmap of grad), the independent per-sample
gradients, on several torch.nn models; unsupported layers are refused by name."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import sgdx

DT = torch.float64


def reference_norms(model, loss_of, *inputs):
    """||grad l_i|| from one grad per sample (vmap), float64."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def one(p, *xs):
        return loss_of(functional_call(model, p, tuple(x.unsqueeze(0) for x in xs[:-1])), xs[-1].unsqueeze(0))

    g = vmap(grad(one), in_dims=(None,) + (0,) * len(inputs))(params, *inputs)
    return torch.sqrt(sum(v.flatten(1).pow(2).sum(1) for v in g.values()))


class Tokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 6)
        self.norm = torch.nn.LayerNorm(6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, t):
        return self.head(self.norm(self.emb(t)).mean(1))


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.ReLU(), torch.nn.Linear(9, 4))


def cnn():
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 4, 3, stride=2, groups=2), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 3 * 3, 5))


def bn_eval():
    m = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                            torch.nn.Linear(3 * 5 * 5, 4))
    m[1].running_mean.uniform_(-0.5, 0.5)
    m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


CASES = {
    "mlp": (mlp, lambda B: (torch.randn(B, 7, dtype=DT),), 4),
    "cnn": (cnn, lambda B: (torch.randn(B, 2, 7, 7, dtype=DT),), 5),
    "bn-eval": (bn_eval, lambda B: (torch.randn(B, 2, 7, 7, dtype=DT),), 4),
    "embedding": (Tokens, lambda B: (torch.randint(0, 11, (B, 5)),), 3),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_norms_equal_torch_func(case, reduction):
    build, inputs, classes = CASES[case]
    model = build().to(DT)
    B = 6
    xs = inputs(B)
    y = torch.randint(0, classes, (B,))
    cap = sgdx.PerSampleGradients(model, reduction=reduction)
    loss = F.cross_entropy(model(*xs), y, reduction=reduction)
    cap.attach(loss, B)
    loss.backward()
    ref = reference_norms(model, lambda out, t: F.cross_entropy(out, t), *xs, y)
    torch.testing.assert_close(cap.norms(), ref, rtol=1e-10, atol=1e-12)
    # The model's gradients are the ordinary ones.
    assert all(p.grad is not None for p in model.parameters())


def test_per_sample_norms_helper_and_ignore():
    model = mlp().to(DT)
    x, y = torch.randn(5, 7, dtype=DT), torch.randint(0, 4, (5,))
    norms = sgdx.per_sample_norms(model, F.cross_entropy(model(x), y), 5)
    torch.testing.assert_close(norms, reference_norms(model, F.cross_entropy, x, y), rtol=1e-10, atol=1e-12)
    # Frozen parameters are left out, as torch.func leaves them out.
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    norms = sgdx.per_sample_norms(model, F.cross_entropy(model(x), y), 5)
    torch.testing.assert_close(norms, reference_norms(model, F.cross_entropy, x, y), rtol=1e-10, atol=1e-12)


def test_unsupported_layer_is_refused_by_name():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.PReLU(), torch.nn.Linear(4, 2))
    x, y = torch.randn(3, 4), torch.randint(0, 2, (3,))
    cap = sgdx.PerSampleGradients(model)
    with pytest.raises(RuntimeError, match=r"layer '1' of type PReLU .* not supported"):
        cap.attach(F.cross_entropy(model(x), y), 3)
    # ... unless its parameters are ignored.
    cap = sgdx.PerSampleGradients(model, ignore=["1.weight"])
    loss = F.cross_entropy(model(x), y)
    cap.attach(loss, 3)
    loss.backward()
    assert cap.norms().shape == (3,)


def test_batch_norm_in_training_mode_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    with pytest.raises(RuntimeError, match="BatchNorm"):
        sgdx.PerSampleGradients(model).attach(F.cross_entropy(model(x), y), 6)


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        sgdx.PerSampleGradients(mlp(), reduction="avg")
    model = mlp()
    cap = sgdx.PerSampleGradients(model)
    with pytest.raises(RuntimeError, match="call attach"):
        cap.norms()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("case", sorted(CASES))
def test_norms_on_cuda_equal_torch_func(case):
    build, inputs, classes = CASES[case]
    model = build().to(DT).cuda()
    B = 6
    xs = tuple(x.cuda() for x in inputs(B))
    y = torch.randint(0, classes, (B,), device="cuda")
    cap = sgdx.PerSampleGradients(model)
    loss = F.cross_entropy(model(*xs), y)
    cap.attach(loss, B)
    loss.backward()
    ref = reference_norms(model, lambda out, t: F.cross_entropy(out, t), *xs, y)
    torch.testing.assert_close(cap.norms().double(), ref, rtol=1e-5, atol=1e-7)
