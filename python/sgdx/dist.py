"""Data-parallel sgdx over the user's ``torch.distributed`` process group.

``Communicator(group)`` hands a process group (the default group when None) to sgdx's
C++ code, whose optimizers and distributed samplers then agree across ranks exactly as
in C++ (sgdx/dist/communicator.h): every collective they run is a ``torch.distributed``
call on that group, made from the C++ code with the GIL held.

::

    torch.distributed.init_process_group("gloo")
    comm = sgdx.dist.Communicator()
    ddp = sgdx.dist.DataParallel(list(model.parameters()), comm)
    ddp.broadcast_parameters()                      # every rank starts from rank 0's model
    opt = sgdx.optim.GradQueueSGDM(model.parameters(), lr=0.1)
    opt.set_communicator(comm)                      # loss trend, found_inf: global
    ...
    loss.backward(); ddp.average_gradients(); opt.step(lambda: loss)

(torch's own DistributedDataParallel averages gradients as well; sgdx's DataParallel is
the C++ one, bucketed, without module wrapping.)
"""
from typing import List, Optional

import torch
import torch.distributed as dist

from . import _C


class _Group:
    """The collectives sgdx's C++ Communicator needs, on one torch.distributed group."""

    def __init__(self, group: Optional[dist.ProcessGroup]):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("sgdx.dist: torch.distributed is not initialised "
                               "(call torch.distributed.init_process_group first)")
        self.group = group

    def rank(self) -> int:
        return dist.get_rank(self.group)

    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    def all_reduce_sum(self, tensors: List[torch.Tensor]) -> None:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)

    def all_reduce_max(self, tensors: List[torch.Tensor]) -> None:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)

    def broadcast(self, tensors: List[torch.Tensor], root: int) -> None:
        for t in tensors:
            dist.broadcast(t, group_src=root, group=self.group)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(self.world_size())]
        dist.all_gather(out, tensor, group=self.group)
        return torch.stack(out)

    def barrier(self) -> None:
        dist.barrier(group=self.group)


def Communicator(group: Optional[dist.ProcessGroup] = None) -> "_C.Communicator":
    """sgdx's communicator over ``group`` (the default process group when None)."""
    return _C.Communicator(_Group(group))


class DataParallel:
    """sgdx's C++ data-parallel gradient averaging (sgdx/dist/data_parallel.h): gradients
    are flattened into buckets of at most ``bucket_bytes`` and all-reduced;
    :meth:`average_gradients` makes each ``.grad`` its mean over ranks (a parameter without
    a gradient on some ranks counts as zero there). ``params`` in the same order on every rank."""

    def __init__(self, params: List[torch.Tensor], comm, bucket_bytes: int = 25 << 20):
        self._impl = _C.DataParallel(list(params), comm, int(bucket_bytes))

    def broadcast_parameters(self) -> None:
        """Copies rank 0's parameters into every rank's."""
        self._impl.broadcast_parameters()

    def broadcast_from_root(self, tensors: List[torch.Tensor]) -> None:
        """Copies rank 0's values of ``tensors`` (e.g. buffers) into every rank's."""
        self._impl.broadcast_from_root(list(tensors))

    def average_gradients(self) -> None:
        self._impl.average_gradients()

    def gradient_bytes(self) -> int:
        return self._impl.gradient_bytes()


__all__ = ["Communicator", "DataParallel"]
