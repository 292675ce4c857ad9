"""Exact per-sample gradient norms for ``torch.nn`` models (sgdx/ops/per_sample.h).

The C++ capture reads the autograd graph of one forward: for each layer it keeps the
layer's input and hooks its output gradient during the ordinary backward, then
computes per-sample norms without per-sample backward passes. Supported layers:
Linear, Conv2d, Embedding, LayerNorm, GroupNorm and BatchNorm in eval mode; any other
layer with trainable parameters is refused by name (leave its parameters out with
``ignore``). The model's gradients are the ordinary ones.
"""
from typing import List, Optional, Sequence

import torch

from . import _C


def _modules(model: torch.nn.Module):
    """Every module in named_modules() order with its own parameters (as the C++ tree)."""
    out = []
    for name, module in model.named_modules(remove_duplicate=False):
        params = [(pname, p) for pname, p in module.named_parameters(recurse=False) if p is not None]
        out.append((name, type(module).__name__, params))
    return out


class PerSampleGradients:
    """Captures one forward+backward of ``model``::

        cap = sgdx.PerSampleGradients(model)
        loss = F.cross_entropy(model(x), y)       # mean over the batch
        cap.attach(loss, x.shape[0])              # before backward
        loss.backward()                           # ordinary gradients
        norms = cap.norms()                       # [B], ||grad l_i||

    ``reduction``: how the loss combines the per-sample losses ("mean" or "sum");
    ``strategy``: "automatic", "ghost" or "materialize"; ``backend``: "automatic",
    "aten" or "fused_cuda"; ``ignore``: parameter names left out of every result.
    """

    def __init__(self, model: torch.nn.Module, reduction: str = "mean", strategy: str = "automatic",
                 ignore: Sequence[str] = (), backend: str = "automatic"):
        self.model = model  # its parameters must outlive the capture
        self._impl = _C.PerSampleGradients(_modules(model), reduction, strategy, list(ignore), backend)

    def attach(self, loss: torch.Tensor, batch_size: int) -> None:
        """Walks the graph of ``loss`` (a scalar, before backward) and hooks every layer."""
        self._impl.attach(loss, int(batch_size))

    def ready(self) -> bool:
        return self._impl.ready()

    def norms(self) -> torch.Tensor:
        """Per-sample gradient norms ``||grad l_i||``, [B]."""
        return self._impl.norms()

    def squared_norms(self) -> torch.Tensor:
        return self._impl.squared_norms()

    def layer_squared_norms(self) -> torch.Tensor:
        """[layers, B], in the order of :meth:`layer_names`."""
        return self._impl.layer_squared_norms()

    def layer_names(self) -> List[str]:
        return self._impl.layer_names()

    def gram(self, subset: torch.Tensor) -> torch.Tensor:
        """``G[a, b] = <grad l_{s_a}, grad l_{s_b}>`` for the batch indices ``subset``."""
        return self._impl.gram(subset)

    def dot(self, direction: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        """``<grad l_i, direction>`` per sample; one tensor (or None) per parameter, in
        ``named_parameters()`` order."""
        return self._impl.dot(list(direction))

    def per_sample_grad(self, parameter_name: str) -> torch.Tensor:
        """The per-sample gradients of one parameter, [B, *shape] (materialised)."""
        return self._impl.per_sample_grad(parameter_name)


def per_sample_norms(model: torch.nn.Module, loss: torch.Tensor, batch_size: int, reduction: str = "mean",
                     ignore: Sequence[str] = ()) -> torch.Tensor:
    """Runs ``loss.backward()`` (the ordinary gradients accumulate as usual) and returns
    each sample's gradient norm ``||grad l_i||``, [B]. ``loss`` must be the mean (or, with
    ``reduction="sum"``, the sum) of the batch's per-sample losses."""
    cap = PerSampleGradients(model, reduction=reduction, ignore=ignore)
    cap.attach(loss, batch_size)
    loss.backward()
    return cap.norms()
