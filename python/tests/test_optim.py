"""sgdx.optim against pure-PyTorch references written here from the specs (not calling
sgdx's operators), against torch.optim.SGD where a method reduces to it, and against the
C++ class it wraps (a plumbing check)."""
import copy
import inspect
import math

import pytest
import torch

import sgdx
from sgdx import _C
from sgdx.optim import DASVRDA, SVRG, GradQueueSGDM, Katyusha, RSGD

DT = torch.float64


def model64(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(DT)


def set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def step_alike(a, opt_a, b, opt_b, steps, step_b=None):
    """The same gradients (set_grads(step)) into two models, a step of each optimizer."""
    for step in range(steps):
        set_grads(a.parameters(), step)
        set_grads(b.parameters(), step)
        opt_a.step()
        (step_b or opt_b.step)()


# ---------------------------------------------------------------- R-SGD

def rsgd_reference(params, grads_per_step, lr, wd, xi_of, memory="accumulated"):
    """The rule (docs/rsgd.md) with the Bernoulli draws given by xi_of(step, k, shape)."""
    ps = [p.detach().clone() for p in params]
    mem = [torch.zeros_like(p) for p in ps]
    for t, grads in enumerate(grads_per_step, start=1):
        for k, (p, g) in enumerate(zip(ps, grads)):
            g = g + wd * p
            h = g + xi_of(t, k, p.shape) * mem[k]
            p -= lr * h
            mem[k] = h if memory == "accumulated" else g
    return ps


@pytest.mark.parametrize("max_prob,memory", [(0.0, "accumulated"), (1.0, "accumulated"), (1.0, "previous")])
def test_rsgd_equals_reference_when_draws_are_certain(max_prob, memory):
    # gamma0 = 0: Gamma_t = max_prob for every t, so xi is all zeros or all ones.
    m = model64()
    params = list(m.parameters())
    opt = RSGD(params, lr=0.05, gamma0=0.0, max_prob=max_prob, memory=memory, weight_decay=0.01, seed=3)
    start = [p.detach().clone() for p in params]
    grads = []
    for step in range(6):
        set_grads(params, step)
        grads.append([p.grad.clone() for p in params])
        opt.step()
    ref = rsgd_reference(start, grads, 0.05, 0.01, lambda t, k, s: torch.full(s, max_prob, dtype=DT), memory)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-13, atol=1e-13)


def test_rsgd_without_reinforcement_is_torch_sgd():
    a, b = model64(), model64()
    opt_a = RSGD(a.parameters(), lr=0.1, gamma0=0.0, max_prob=0.0, weight_decay=0.003)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, weight_decay=0.003)
    step_alike(a, opt_a, b, opt_b, 5)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-14)


def test_rsgd_draws_are_bernoulli_of_the_scheduled_probability():
    # memory=previous: h = g_t + xi * g_{t-1}, so each element's xi is recovered exactly
    # from the move; the rule says xi in {0, 1} with P(xi = 1) = Gamma_t.
    p = torch.zeros(20000, dtype=DT, requires_grad=True)
    gamma, gamma0, lr = 0.5, 0.8, 1.0
    opt = RSGD([p], lr=lr, gamma=gamma, gamma0=gamma0, max_prob=0.9, memory="previous", seed=11)
    prev = None
    for t in range(1, 5):
        g = torch.randn(p.shape, dtype=DT) + 3.0
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        if prev is not None:
            xi = ((before - p.detach()) / lr - g) / prev
            assert torch.all((xi.abs() < 1e-9) | ((xi - 1).abs() < 1e-9)), "a draw outside {0, 1}"
            gamma_t = min(0.9, 1 - gamma0 * gamma ** t)
            assert gamma_t == pytest.approx(_C.rsgd_probability(gamma, gamma0, 0.9, t))
            freq = (xi > 0.5).double().mean().item()
            se = math.sqrt(gamma_t * (1 - gamma_t) / p.numel())
            assert abs(freq - gamma_t) < 5 * se, (t, freq, gamma_t)
        prev = g


# ---------------------------------------------------------------- GradQueue-SGDM

def gradqueue_reference(start, grads_per_step, lr, momentum, wd, q_min, window, rho_min, rho_max, kappa, eps,
                        granularity):
    """The rule (sgdx/optim/gradqueue.h) in float64 with a fixed window L (no loss given)."""
    zref = math.sqrt(2 / math.pi)
    ps = [p.detach().clone() for p in start]
    hist = [[] for _ in ps]
    vel = [None for _ in ps]
    for grads in grads_per_step:
        for k, (p, g) in enumerate(zip(ps, grads)):
            d = g + wd * p
            w = hist[k][-window:]
            if len(w) < q_min:
                rho = torch.ones_like(d)
            else:
                q = torch.stack(w)
                mu = q.mean(0)
                var = ((q - mu) ** 2).mean(0)
                if granularity == "element":
                    z = (d - mu).abs() / (var.sqrt() + eps) / zref
                else:
                    z = torch.full_like(d, ((d - mu).norm() / (var.sum().sqrt() + eps)).item())
                rho = (z ** kappa).clamp(rho_min, rho_max)
            hist[k].append(d.clone())
            step = rho * d
            vel[k] = step if vel[k] is None else momentum * vel[k] + step
            p -= lr * vel[k]
    return ps


@pytest.mark.parametrize("granularity,storage", [("element", "exact"), ("tensor", "exact")])
def test_gradqueue_equals_reference(granularity, storage):
    m = model64()
    params = list(m.parameters())
    start = [p.detach().clone() for p in params]
    opt = GradQueueSGDM(params, lr=0.05, momentum=0.9, weight_decay=0.01, q_min=3, q_init=5, q_max=8,
                        rho_min=0.25, rho_max=3.0, kappa=1.5, granularity=granularity, storage=storage)
    grads = []
    for step in range(12):
        set_grads(params, 100 + step)
        grads.append([p.grad.clone() for p in params])
        opt.step()
    ref = gradqueue_reference(start, grads, 0.05, 0.9, 0.01, 3, 5, 0.25, 3.0, 1.5, 1e-8, granularity)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12)


def test_gradqueue_with_unit_rho_is_torch_sgd_momentum():
    a, b = model64(), model64()
    opt_a = GradQueueSGDM(a.parameters(), lr=0.1, momentum=0.8, dampening=0.1, nesterov=False,
                          weight_decay=0.002, rho_min=1.0, rho_max=1.0)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.8, dampening=0.1, weight_decay=0.002)
    step_alike(a, opt_a, b, opt_b, 10)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- variance reduction

def least_squares(n=24, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.randn(n, generator=g, dtype=DT)
    return A, y


def component_grad(A, y, x, idx):
    """mean over idx of grad of f_i(x) = 0.5 (a_i x - y_i)^2."""
    r = A[idx] @ x - y[idx]
    return A[idx].T @ r / len(idx)


def prox(v, c, l1, l2):
    return torch.sign(v) * (v.abs() - c * l1).clamp_min(0) / (1 + c * l2)


def vr_problem(opt_class, batches, **kw):
    A, y = least_squares()
    x = torch.zeros(A.shape[1], dtype=DT, requires_grad=True)
    opt = opt_class([x], n=A.shape[0], **kw)

    def full():
        opt.zero_grad()
        loss = 0.5 * ((A @ x - y) ** 2).mean()
        loss.backward()
        return loss

    opt.set_full_gradient_closure(full)
    it = {"batch": None}

    def batch():
        opt.zero_grad()
        idx = it["batch"]
        loss = 0.5 * ((A[idx] @ x - y[idx]) ** 2).mean()
        loss.backward()
        return loss

    return A, y, x, opt, it, batch


def test_svrg_equals_reference_step_by_step():
    lr, l1, l2, b, m = 0.05, 0.01, 0.02, 4, 5
    g = torch.Generator().manual_seed(5)
    batches = [torch.randperm(24, generator=g)[:b] for _ in range(3 * m)]
    A, y, x, opt, it, batch = vr_problem(SVRG, batches, lr=lr, b=b, m=m, l1=l1, l2=l2)
    ref = torch.zeros(A.shape[1], dtype=DT)
    for s in range(3 * m):
        if s % m == 0:
            snap, mu = ref.clone(), component_grad(A, y, ref, torch.arange(24))
        idx = batches[s]
        v = component_grad(A, y, ref, idx) - component_grad(A, y, snap, idx) + mu
        ref = prox(ref - lr * v, lr, l1, l2)
        it["batch"] = idx
        opt.step(batch)
        torch.testing.assert_close(x.detach(), ref, rtol=1e-12, atol=1e-14)
    assert opt.gradient_evaluations() == 3 * 24 + 3 * m * 2 * b


def fista_optimum(A, y, l1, l2, iters=20000):
    """An independent solver of 0.5 mean (Ax - y)^2 + l1 |x|_1 + l2/2 |x|^2 (FISTA, float64)."""
    L = torch.linalg.eigvalsh(A.T @ A / A.shape[0]).max().item()
    x = z = torch.zeros(A.shape[1], dtype=DT)
    t = 1.0
    for _ in range(iters):
        g = A.T @ (A @ z - y) / A.shape[0]
        x_new = prox(z - g / L, 1 / L, l1, l2)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = x_new + (t - 1) / t_new * (x_new - x)
        x, t = x_new, t_new
    return x, L


def objective(A, y, x, l1, l2):
    return (0.5 * ((A @ x - y) ** 2).mean() + l1 * x.abs().sum() + 0.5 * l2 * (x * x).sum()).item()


@pytest.mark.parametrize("opt_class", [Katyusha, DASVRDA, SVRG])
def test_vr_methods_reach_the_independent_optimum(opt_class):
    l1, l2 = 0.01, 0.05
    A, y = least_squares()
    x_star, L_max = fista_optimum(A, y, l1, l2)
    L_i = (A * A).sum(1).max().item()  # each f_i is L_i-smooth
    kw = dict(lr=1 / (3 * L_i), b=4) if opt_class is SVRG else dict(L=L_i, b=4)
    _, _, x, opt, it, batch = vr_problem(opt_class, None, l1=l1, l2=l2, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(3000):
        it["batch"] = torch.randint(0, 24, (4,), generator=g)
        opt.step(batch)
    p_star = objective(A, y, x_star, l1, l2)
    gap = (objective(A, y, x.detach(), l1, l2) - p_star) / abs(p_star)
    assert gap < 1e-9, gap


# ---------------------------------------------------------------- PyTorch conventions

def make(name, params):
    if name == "RSGD":
        return RSGD(params, lr=0.05, seed=7)
    if name == "GradQueueSGDM":
        return GradQueueSGDM(params, lr=0.05, q_min=2, q_init=3, q_max=4)
    if name == "GradQueueSGDM-ema":
        return GradQueueSGDM(params, lr=0.05, q_min=2, q_init=3, q_max=4, storage="ema")
    n = 24
    if name == "SVRG":
        return SVRG(params, lr=0.02, n=n, b=4, m=3, l1=0.001, snapshot="random", seed=3)
    if name == "Katyusha":
        return Katyusha(params, L=10.0, n=n, b=4, m=3, l2=0.01)
    return DASVRDA(params, L=10.0, n=n, b=4, m=3, l1=0.001, l2=0.01)


ALL = ["RSGD", "GradQueueSGDM", "GradQueueSGDM-ema", "SVRG", "Katyusha", "DASVRDA"]


class Run:
    """A model, data and optimizer; step(k) takes the k-th batch (a function of k only)."""

    def __init__(self, name, seed=0):
        self.model = model64(seed)
        self.opt = make(name, list(self.model.parameters()))
        g = torch.Generator().manual_seed(42)
        self.X = torch.randn(24, 6, generator=g, dtype=DT)
        self.Y = torch.randn(24, 3, generator=g, dtype=DT)
        self.vr = isinstance(self.opt, (SVRG, Katyusha, DASVRDA))
        if self.vr:
            self.opt.set_full_gradient_closure(lambda: self.loss(torch.arange(24)))

    def loss(self, idx):
        self.opt.zero_grad()
        loss = ((self.model(self.X[idx]) - self.Y[idx]) ** 2).mean()
        loss.backward()
        return loss

    def step(self, k):
        idx = torch.arange(4 * k, 4 * k + 4) % 24
        if self.vr:
            self.opt.step(lambda: self.loss(idx))
        else:
            self.loss(idx)
            self.opt.step(lambda: self.loss(idx)) if k % 2 else self.opt.step()

    def params(self):
        return [p.detach().clone() for p in self.model.parameters()]


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_continues_identically(name):
    a = Run(name)
    for k in range(7):
        a.step(k)
    sd = copy.deepcopy(a.opt.state_dict())
    saved_params = a.params()
    for k in range(7, 14):
        a.step(k)
    b = Run(name, seed=1)  # other initial parameters, overwritten below
    with torch.no_grad():
        for p, s in zip(b.model.parameters(), saved_params):
            p.copy_(s)
    b.opt.load_state_dict(sd)
    for k in range(7, 14):
        b.step(k)
    for p, q in zip(a.params(), b.params()):
        assert torch.equal(p, q), name
    assert set(sd) == {"state", "param_groups", "sgdx"}
    assert sorted(sd["state"]) == list(range(len(list(a.model.parameters()))))
    assert sd["param_groups"][0]["params"] == list(range(4))


@pytest.mark.parametrize("name", ["RSGD", "GradQueueSGDM", "SVRG", "Katyusha"])
def test_grad_scaler_skipped_step_changes_nothing(name):
    run = Run(name)
    for k in range(3):
        run.step(k)
    before = run.params()
    sd = copy.deepcopy(run.opt.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    idx = torch.arange(4)
    if run.vr:
        def closure():
            run.opt.zero_grad()
            out = run.model(run.X[idx])
            out = out.clone()
            loss = ((out - run.Y[idx]) ** 2).mean() * float("inf")
            scaler.scale(loss).backward()
            return loss
        run.opt.found_inf = torch.ones((), dtype=torch.float32)
        run.opt.grad_scale = torch.full((), 1024.0)
        try:
            run.opt.step(closure)
        finally:
            del run.opt.found_inf, run.opt.grad_scale
    else:
        run.opt.zero_grad()
        loss = ((run.model(run.X[idx]) - run.Y[idx]) ** 2).mean()
        scaler.scale(loss).backward()
        for p in run.model.parameters():
            p.grad[0] = float("inf")
        scaler.step(run.opt)
        scaler.update()
        assert scaler.get_scale() == 2.0 ** 9  # the scaler saw the overflow
    for p, q in zip(before, run.params()):
        assert torch.equal(p, q)
    after = run.opt.state_dict()
    for k, st in sd["state"].items():
        for f, v in st.items():
            assert torch.equal(v, after["state"][k][f]) if isinstance(v, torch.Tensor) else v == after["state"][k][f]
    assert sd["sgdx"] == after["sgdx"]


@pytest.mark.parametrize("name", ["RSGD", "GradQueueSGDM"])
def test_grad_scaler_step_equals_unscaled_step(name):
    a, b = Run(name), Run(name)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    idx = torch.arange(4)
    for _ in range(3):
        a.loss(idx)
        a.opt.step()
        b.opt.zero_grad()
        scaler.scale(((b.model(b.X[idx]) - b.Y[idx]) ** 2).mean()).backward()
        scaler.step(b.opt)
        scaler.update()
    for p, q in zip(a.params(), b.params()):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)


def test_lr_scheduler_reaches_the_step():
    # StepLR halves lr after two steps: the move of plain SGD (max_prob 0) halves.
    p = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = RSGD([p], lr=0.4, gamma0=0.0, max_prob=0.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    moves = []
    for _ in range(4):
        before = p.detach().clone()
        p.grad = torch.ones(3, dtype=DT)
        opt.step()
        sched.step()
        moves.append((before - p.detach())[0].item())
    assert moves == pytest.approx([0.4, 0.4, 0.2, 0.2], rel=1e-15)


def test_param_groups_keep_their_options():
    a = torch.zeros(2, dtype=DT, requires_grad=True)
    b = torch.zeros(2, dtype=DT, requires_grad=True)
    opt = RSGD([{"params": [a]}, {"params": [b], "lr": 0.5, "weight_decay": 0.0}], lr=0.1, gamma0=0.0, max_prob=0.0)
    c = torch.zeros(2, dtype=DT, requires_grad=True)
    opt.add_param_group({"params": [c], "lr": 0.25})
    for t in (a, b, c):
        t.grad = torch.ones(2, dtype=DT)
    opt.step()
    assert a[0].item() == pytest.approx(-0.1) and b[0].item() == pytest.approx(-0.5)
    assert c[0].item() == pytest.approx(-0.25)


@pytest.mark.parametrize("cls,required", [(RSGD, {"lr": 0.1}), (GradQueueSGDM, {"lr": 0.1}),
                                          (SVRG, {"lr": 0.1, "n": 10}), (Katyusha, {"L": 1.0, "n": 10}),
                                          (DASVRDA, {"L": 1.0, "n": 10})])
def test_defaults_and_names_are_the_cpp_options(cls, required):
    # The C++ defaults: an options object built from the required fields alone.
    cxx = cls._impl_class([], dict(required)).defaults()
    py = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items()
          if v.default is not inspect.Parameter.empty and k != "fused_cuda"}
    py.update(required)
    for key, value in py.items():
        if key in cls._enums:
            value = cls._enums[key][value]
        assert key in cxx, f"{cls.__name__}: Python option {key} is not a C++ option"
        assert cxx[key] == value, (cls.__name__, key, cxx[key], value)
    assert set(cxx) == set(py), (cls.__name__, set(cxx) ^ set(py))


def test_cpp_errors_surface_with_their_message():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="max_prob"):
        RSGD([p], lr=0.1, max_prob=1.5)
    with pytest.raises(ValueError, match="granularity must be one of"):
        RSGD([p], lr=0.1, granularity="row")
    with pytest.raises(TypeError, match="q_min"):
        GradQueueSGDM([p], lr=0.1, q_min=2.5)
    opt = SVRG([p], lr=0.1, n=4)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    opt = RSGD([p], lr=0.1)
    opt.param_groups[0]["gamma"] = -1.0
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="gamma"):
        opt.step()


def test_python_optimizer_equals_the_cpp_class():
    # Plumbing: the Python class and the C++ optimizer it wraps, used directly.
    a, b = model64(), model64()
    opt_a = RSGD(a.parameters(), lr=0.05, seed=9, granularity="tensor")
    opt_b = _C.RSGD([(list(b.parameters()), {"lr": 0.05, "seed": 9, "granularity": 1})],
                    {"lr": 0.05, "seed": 9, "granularity": 1})
    step_alike(a, opt_a, b, opt_b, 5, step_b=lambda: opt_b.step(None))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_rsgd_on_cuda_equals_cpu_with_certain_draws():
    a = model64()
    b = copy.deepcopy(a).cuda()
    opt_a = RSGD(a.parameters(), lr=0.05, gamma0=0.0, max_prob=1.0)
    opt_b = RSGD(b.parameters(), lr=0.05, gamma0=0.0, max_prob=1.0)
    for step in range(4):
        set_grads(a.parameters(), step)
        for p, q in zip(a.parameters(), b.parameters()):
            q.grad = p.grad.cuda()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("granularity", ["element", "tensor"])
def test_gradqueue_on_cuda_equals_reference(granularity):
    m = model64().cuda()
    params = list(m.parameters())
    start = [p.detach().cpu().clone() for p in params]
    opt = GradQueueSGDM(params, lr=0.05, momentum=0.9, weight_decay=0.01, q_min=3, q_init=5, q_max=8,
                        rho_min=0.25, rho_max=3.0, kappa=1.5, granularity=granularity)
    grads = []
    for step in range(12):
        set_grads(start, 100 + step)
        grads.append([p.grad.clone() for p in start])
        for p, q in zip(params, start):
            p.grad = q.grad.cuda()
        opt.step()
    ref = gradqueue_reference(start, grads, 0.05, 0.9, 0.01, 3, 5, 0.25, 3.0, 1.5, 1e-8, granularity)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach().cpu(), r, rtol=1e-10, atol=1e-12)


def test_load_replaces_the_state_of_a_stepped_optimizer():
    # b has no gradient when the checkpoint is taken: after loading, b has no state, as then.
    a = torch.zeros(3, dtype=DT, requires_grad=True)
    b = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = RSGD([a, b], lr=0.1, gamma0=0.0, max_prob=1.0)
    a.grad = torch.ones(3, dtype=DT)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    saved = a.detach().clone(), b.detach().clone()
    assert list(sd["state"]) == [0]
    b.grad = torch.ones(3, dtype=DT)
    opt.step()
    opt.step()
    with torch.no_grad():
        a.copy_(saved[0])
        b.copy_(saved[1])
    opt.load_state_dict(sd)
    assert list(opt.state_dict()["state"]) == [0]
    opt.step()  # b's first step: h = g (no memory), a's: h = g + memory
    assert b[0].item() == pytest.approx(-0.1) and a[0].item() == pytest.approx(-0.1 - 0.1 * 2)


@pytest.mark.parametrize("value", [None, 2.5, torch.tensor(1.5)])
def test_step_returns_what_the_closure_returned(value):
    p = torch.zeros(2, requires_grad=True)
    opt = GradQueueSGDM([p], lr=0.1)

    def closure():
        p.grad = torch.ones(2)
        return value

    assert opt.step(closure) is value
    assert p[0].item() == pytest.approx(-0.1)


def test_an_svrg_with_closures_is_collected():
    import gc
    import weakref

    def build():
        x = torch.zeros(3, requires_grad=True)
        opt = SVRG([x], lr=0.1, n=4)
        opt.set_full_gradient_closure(lambda: (opt.zero_grad(), (x * x).sum())[1])
        return weakref.ref(opt), weakref.ref(x)

    refs = build()
    gc.collect()
    assert refs[0]() is None and refs[1]() is None


def test_seeds_use_all_64_bits():
    p = torch.zeros(2, requires_grad=True)
    opt = RSGD([p], lr=0.1, seed=2 ** 64 - 1)
    assert opt._impl.defaults()["seed"] == 2 ** 64 - 1
    with pytest.raises(ValueError, match="does not fit 64 bits"):
        RSGD([p], lr=0.1, seed=2 ** 64)
    s = sgdx.data.ImportanceSampler(10, 2, seed=2 ** 63 + 7)
    state = s.state_dict()
    assert state["seed"] == 2 ** 63 + 7
    t = sgdx.data.ImportanceSampler(10, 2, seed=2 ** 63 + 7)
    t.load_state_dict(state)
    assert next(iter(t)) == next(iter(s))
