"""sgdx's optimizers as ``torch.optim.Optimizer`` subclasses.

Each class holds the C++ optimizer of the same name over the same parameter tensors:
the step is the C++ step (fused kernels, the same random streams, the same checks),
and this module adapts it to PyTorch's conventions:

* parameter groups are the usual dicts; a group's options (``lr`` included, so LR
  schedulers work) are handed to the C++ optimizer before each step when they changed;
* ``state_dict()`` is in PyTorch's format (``state`` per parameter index, with the C++
  state's fields as tensors and numbers; ``param_groups``) plus ``"sgdx"``: the
  optimizer-wide counters of the C++ checkpoint (bytes, without the tensors);
* ``torch.amp.GradScaler``: ``_step_supports_amp_scaling`` is set, so the scaler hands
  its scale and found-inf flag to the step, which unscales in its fused pass and, on
  an overflow, changes nothing at all (parameters, state, counters, random streams).

Option names and defaults are the C++ options' (``sgdx/optim/*.h``); enum options take
their C++ names as strings (``granularity="tensor"``).
"""
import contextlib
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch

from . import _C

ParamsT = Union[Iterable[torch.Tensor], Iterable[Dict[str, Any]]]
Closure = Callable[[], Any]


class _Closure:
    """A closure as the C++ step calls it: under enable_grad, its loss as a tensor (None
    passes through: no loss); ``value`` keeps what it returned, which step() returns as
    torch.optim's optimizers do."""

    def __init__(self, closure: Closure):
        self.closure = closure
        self.value: Any = None

    def __call__(self) -> Optional[torch.Tensor]:
        with torch.enable_grad():
            self.value = self.closure()
        loss = self.value
        if loss is None or isinstance(loss, torch.Tensor):
            return loss
        return torch.tensor(float(loss), dtype=torch.float64)


@contextlib.contextmanager
def _options_error():
    """An option the C++ options refuse is a ValueError (as torch.optim's), same message."""
    try:
        yield
    except RuntimeError as e:
        raise ValueError(str(e)) from None


class _SgdxOptimizer(torch.optim.Optimizer):
    """The part every sgdx optimizer shares (see the module docstring)."""

    _impl_class: Any = None
    _ctor_key = "lr"
    _enums: Dict[str, Dict[str, int]] = {}
    _step_supports_amp_scaling = True

    def __init__(self, params: ParamsT, defaults: Dict[str, Any]):
        if defaults.get("fused_cuda") is None:
            defaults.pop("fused_cuda", None)
        self._impl = None
        super().__init__(params, defaults)
        with _options_error():
            self._impl = self._impl_class([(g["params"], self._cxx(g)) for g in self.param_groups],
                                          self._cxx(self.defaults))
        self._pushed: List[Optional[Dict[str, Any]]] = [self._cxx(g) for g in self.param_groups]

    # --- options
    def _cxx(self, group: Dict[str, Any]) -> Dict[str, Any]:
        """The group's options under their C++ names and types (enums as their values)."""
        out = {}
        for key in self.defaults:
            value = group[key]
            if key in self._enums:
                names = self._enums[key]
                if isinstance(value, str):
                    if value not in names:
                        raise ValueError(f"{type(self).__name__}: {key} must be one of {sorted(names)}, got {value!r}")
                    value = names[value]
            out[key] = value
        return out

    def _sync(self) -> None:
        """Hands changed group options to the C++ optimizer (only lr: its set_lr)."""
        for i, group in enumerate(self.param_groups):
            current = self._cxx(group)
            pushed = self._pushed[i]
            if current == pushed:
                continue
            with _options_error():
                self._push(i, current, pushed)
            self._pushed[i] = current

    def _push(self, i: int, current: Dict[str, Any], pushed: Optional[Dict[str, Any]]) -> None:
        if pushed is not None and [k for k in current if current[k] != pushed.get(k)] == ["lr"]:
            self._impl.set_lr(i, float(current["lr"]))
        else:
            self._impl.set_options(i, current)

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if getattr(self, "_impl", None) is not None:
            group = self.param_groups[-1]
            with _options_error():
                self._impl.add_param_group(group["params"], self._cxx(group))
            self._pushed.append(self._cxx(group))

    def set_communicator(self, comm) -> None:
        """Data-parallel: the group (:func:`sgdx.dist.Communicator`) over which the step's
        data-dependent values (loss trend, found_inf, the closures' gradients) are reduced,
        so every rank takes the step of one process on the combined batch. Every rank calls it."""
        self._impl.set_communicator(comm)

    # --- step
    def step(self, closure: Optional[Closure] = None) -> Optional[torch.Tensor]:  # type: ignore[override]
        """One step. Under ``torch.amp.GradScaler`` the scaler sets ``grad_scale`` and
        ``found_inf`` on the optimizer for this call; they go to the fused step."""
        self._sync()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        c = None if closure is None else _Closure(closure)
        if grad_scale is None and found_inf is None:
            loss = self._impl.step(c)
        else:
            loss = self._impl.step_scaled(grad_scale, found_inf, c)
        return loss if c is None else c.value

    # --- checkpoints
    def _params(self) -> List[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> Dict[str, Any]:
        """PyTorch's format: ``state`` maps a parameter's index (over the groups, in
        order) to its C++ state's fields; ``param_groups`` lists each group's options and
        parameter indices; ``sgdx`` holds the C++ optimizer-wide counters."""
        state = {}
        for i, p in enumerate(self._params()):
            s = self._impl.param_state(p)
            if s is not None:
                state[i] = s
        groups, start = [], 0
        for g in self.param_groups:
            d = {k: v for k, v in g.items() if k != "params"}
            d["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(d)
        return {"state": state, "param_groups": groups, "sgdx": self._impl.save_extra()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores a ``state_dict()``; the groups must have the same sizes. State
        tensors move to their parameter's device."""
        name = type(self).__name__
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: {len(groups)} saved parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        for i, (g, s) in enumerate(zip(self.param_groups, groups)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(f"{name}.load_state_dict: saved group {i} has {len(s['params'])} parameters, "
                                 f"this optimizer's has {len(g['params'])}")
        if "sgdx" in state_dict:
            self._impl.load_extra(state_dict["sgdx"])
        self._impl.clear_state()  # the saved state replaces this optimizer's, as in torch.optim
        saved_state = state_dict["state"]
        for g, s in zip(self.param_groups, groups):
            for key, value in s.items():
                if key != "params":
                    g[key] = value
            for index, p in zip(s["params"], g["params"]):
                st = saved_state.get(index)
                if st is not None:
                    self._impl.set_param_state(p, st)
        self._pushed = [None] * len(self.param_groups)
        self._sync()


class RSGD(_SgdxOptimizer):
    r"""R-SGD (Huang & Toyoizumi, arXiv:1701.07974; sgdx's reconstruction, docs/rsgd.md).

    ``g = grad + weight_decay * p``; ``Gamma_t = min(max_prob, 1 - gamma0 * gamma^t)``;
    ``xi ~ Bernoulli(Gamma_t)`` per element (or per tensor); ``h = g + xi * m``;
    ``p -= lr * h``; ``m = h`` (memory="accumulated") or ``g`` ("previous"). The draws are
    a pure function of (seed, tensor, step), as in C++.
    """

    _impl_class = _C.RSGD
    _enums = {"granularity": {"element": 0, "tensor": 1}, "memory": {"accumulated": 0, "previous": 1}}

    def __init__(self, params: ParamsT, lr: float, gamma: float = 0.999, gamma0: float = 1.0,
                 max_prob: float = 0.9, granularity: str = "element", memory: str = "accumulated",
                 weight_decay: float = 0.0, seed: int = 0, fused_cuda: Optional[bool] = None):
        super().__init__(params, dict(lr=lr, gamma=gamma, gamma0=gamma0, max_prob=max_prob,
                                      granularity=granularity, memory=memory, weight_decay=weight_decay,
                                      seed=seed, fused_cuda=fused_cuda))


class GradQueueSGDM(_SgdxOptimizer):
    r"""GradQueue-SGDM (after Al Hasib, arXiv:2404.16917; sgdx's rule, docs/gradqueue.md):
    SGD with momentum whose gradient is scaled by its scarcity against a window of recent
    gradients. A closure's loss (or :meth:`observe_loss`) moves the window length.
    ``loss_beta``, ``clusters``, ``kmeans_iters``, ``kmeans_tol``, ``scope`` and ``seed``
    are optimizer-wide (a group may not set another value)."""

    _impl_class = _C.GradQueueSGDM
    _enums = {"granularity": {"element": 0, "tensor": 1}, "storage": {"exact": 0, "ema": 1},
              "scope": {"per_tensor": 0, "global": 1}}

    def __init__(self, params: ParamsT, lr: float, momentum: float = 0.9, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, q_min: int = 4, q_init: int = 8,
                 q_max: int = 32, rho_min: float = 0.5, rho_max: float = 2.0, kappa: float = 1.0,
                 eps: float = 1e-8, granularity: str = "element", storage: str = "exact",
                 resync_every: int = 256, loss_beta: float = 0.9, clusters: int = 1, kmeans_iters: int = 10,
                 kmeans_tol: float = 1e-4, scope: str = "per_tensor", seed: int = 0,
                 fused_cuda: Optional[bool] = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                      weight_decay=weight_decay, q_min=q_min, q_init=q_init, q_max=q_max,
                                      rho_min=rho_min, rho_max=rho_max, kappa=kappa, eps=eps,
                                      granularity=granularity, storage=storage, resync_every=resync_every,
                                      loss_beta=loss_beta, clusters=clusters, kmeans_iters=kmeans_iters,
                                      kmeans_tol=kmeans_tol, scope=scope, seed=seed, fused_cuda=fused_cuda))

    def observe_loss(self, loss: float) -> None:
        """The batch loss of the coming step (instead of a closure)."""
        self._impl.observe_loss(float(loss))

    def clustered_step(self, losses: torch.Tensor, features: torch.Tensor, capture=None) -> torch.Tensor:
        """The clustered variant: runs the backward itself (see GradQueueSGDM::clustered_step);
        ``capture``: a :class:`sgdx.PerSampleGradients` of the model, attached to ``losses.sum()``
        or ``losses.mean()``, for one backward instead of one per cluster."""
        self._sync()
        return self._impl.clustered_step(losses, features, None if capture is None else capture._impl)

    def last_step_info(self) -> Dict[str, Any]:
        """What the last step did: mean Delta-rho, window length, cluster sizes."""
        return self._impl.last_step_info()

    def state_bytes(self) -> int:
        return self._impl.state_bytes()


class _VRMixin(_SgdxOptimizer):
    """The variance-reduced methods work through closures: ``set_full_gradient_closure``
    (grad F at the current parameters into ``.grad``, returns F) and the minibatch closure
    given to ``step`` (it must compute the *same* minibatch each time it is called)."""

    # GradScaler.step neither passes closures nor sees their gradients: mixed precision for
    # these methods is the C++ contract itself, opt.grad_scale / opt.found_inf set for the
    # call (their closures' gradients are then checked and unscaled as they are computed).
    _step_supports_amp_scaling = False

    def set_full_gradient_closure(self, closure: Closure) -> None:
        # The C++ optimizer holds a function that reaches the closure through a weak
        # reference to this optimizer: the closure usually refers to the optimizer, and a
        # cycle through C++ would never be collected.
        self._full = _Closure(closure)
        ref = weakref.ref(self)

        def full() -> Optional[torch.Tensor]:
            opt = ref()
            return None if opt is None else opt._full()

        self._impl.set_full_gradient_closure(full)

    def gradient_evaluations(self) -> int:
        """Component-gradient evaluations so far (n per full gradient, b per minibatch gradient)."""
        return self._impl.gradient_evaluations()

    def step(self, closure: Optional[Closure] = None) -> Optional[torch.Tensor]:  # type: ignore[override]
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs the minibatch closure")
        return super().step(closure)


class SVRG(_VRMixin):
    r"""Proximal SVRG (Johnson & Zhang 2013; Xiao & Zhang 2014) for
    ``(1/n) sum f_i(x) + l1 |x|_1 + l2/2 |x|^2``; ``m = 0``: ``ceil(2n / b)`` inner steps."""

    _impl_class = _C.SVRG
    _enums = {"snapshot": {"last": 0, "random": 1}}

    def __init__(self, params: ParamsT, lr: float, n: int, b: int = 1, m: int = 0, l1: float = 0.0,
                 l2: float = 0.0, snapshot: str = "last", seed: int = 0):
        super().__init__(params, dict(lr=lr, n=n, b=b, m=m, l1=l1, l2=l2, snapshot=snapshot, seed=seed))

    def stage(self) -> int:
        return self._impl.stage()


class Katyusha(_VRMixin):
    r"""Katyusha (Allen-Zhu 2017) with the elastic-net prox. ``L``: the smoothness;
    ``lr = 0``: the y-step ``1/(3L)``; ``m = 0``: ``ceil(n / b)``; ``l2`` is also the strong
    convexity. (Give an explicit ``lr`` to use an LR scheduler.)"""

    _impl_class = _C.Katyusha
    _ctor_key = "L"

    def __init__(self, params: ParamsT, L: float, n: int, b: int = 1, m: int = 0, l1: float = 0.0,
                 l2: float = 0.0, lr: float = 0.0):
        super().__init__(params, dict(L=L, n=n, b=b, m=m, l1=l1, l2=l2, lr=lr))


class DASVRDA(_VRMixin):
    r"""DASVRDA (Murata & Suzuki 2017) with restarts. ``L``: the average smoothness;
    ``b = 0``: ``ceil(sqrt(n))``; ``m = 0``: ``ceil(n / b)``; ``lr = 0``: the theory step."""

    _impl_class = _C.DASVRDA
    _ctor_key = "L"
    _enums = {"restart": {"none": 0, "periodic": 1, "adaptive": 2}}

    def __init__(self, params: ParamsT, L: float, n: int, b: int = 0, m: int = 0, lr: float = 0.0,
                 l1: float = 0.0, l2: float = 0.0, restart: str = "adaptive", restart_period: int = 0):
        super().__init__(params, dict(L=L, n=n, b=b, m=m, lr=lr, l1=l1, l2=l2, restart=restart,
                                      restart_period=restart_period))

    def restarts(self) -> int:
        return self._impl.restarts()


__all__ = ["RSGD", "GradQueueSGDM", "SVRG", "Katyusha", "DASVRDA"]
