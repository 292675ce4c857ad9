"""The functional operators ``torch.ops.sgdx.*`` with their fake implementations.

The schemas mark what each operator mutates, and the fake (meta) implementations
below describe outputs without computing them, so ``torch.compile`` traces through
calls to them.

* ``rsgd_step_(params, grads, memory, tensor_ids, steps, probs, lr, weight_decay, seed,
  per_element, memory_previous)``: one fused R-SGD step in place (sgdx/ops/rsgd_step.h).
* ``elastic_net_prox_(v, c, l1, l2)``: prox of ``c * (l1 |x|_1 + l2/2 |x|^2)`` in place.
* ``upper_bound_scores(logits, targets)``: Katharopoulos & Fleuret's importance score,
  ``||softmax(z_i) - onehot(y_i)||``, one float per row.
"""
from typing import List, Sequence

import torch


@torch.library.register_fake("sgdx::rsgd_step_")
def _rsgd_step_fake(params, grads, memory, tensor_ids, steps, probs, lr, weight_decay, seed, per_element,
                    memory_previous):
    return None


@torch.library.register_fake("sgdx::elastic_net_prox_")
def _elastic_net_prox_fake(v, c, l1, l2):
    return None


@torch.library.register_fake("sgdx::upper_bound_scores")
def _upper_bound_scores_fake(logits, targets):
    torch._check(logits.dim() == 2, lambda: f"upper_bound_scores: logits [B, C] expected, got {tuple(logits.shape)}")
    return logits.new_empty((logits.shape[0],))


def rsgd_step_(params: List[torch.Tensor], grads: List[torch.Tensor], memory: List[torch.Tensor],
               tensor_ids: Sequence[int], steps: Sequence[int], probs: Sequence[float], lr: float,
               weight_decay: float = 0.0, seed: int = 0, per_element: bool = True,
               memory_previous: bool = False) -> None:
    """One R-SGD step on lists of tensors, in place (see ``torch.ops.sgdx.rsgd_step_``)."""
    torch.ops.sgdx.rsgd_step_(params, grads, memory, list(tensor_ids), list(steps), [float(p) for p in probs],
                              float(lr), float(weight_decay), int(seed), bool(per_element), bool(memory_previous))


def elastic_net_prox_(v: torch.Tensor, c: float, l1: float, l2: float) -> None:
    """``v <- sign(v) max(|v| - c l1, 0) / (1 + c l2)`` in place."""
    torch.ops.sgdx.elastic_net_prox_(v, float(c), float(l1), float(l2))


def upper_bound_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """K&F's per-example score ``||softmax(z_i) - onehot(y_i)||_2`` (no gradient flows)."""
    return torch.ops.sgdx.upper_bound_scores(logits, targets)
