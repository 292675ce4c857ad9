"""Samplers for ``torch.utils.data.DataLoader`` over sgdx's C++ samplers.

Both are *batch* samplers (``DataLoader(dataset, batch_sampler=sampler)``). Their draws
are a pure function of (seed, batch number, position) and, for the importance sampler,
of the score table when the batch is drawn: a loader with workers draws batches ahead
of the loop, so those batches come from a table without the latest updates (their
weights are those of the table they were drawn from, so the estimator stays unbiased,
but the run differs from ``num_workers=0``; DistributedImportanceSampler's ``lag``
makes the two agree). The importance sampler's unbiasing weights
``1/(N p_i)`` travel inside the batch: wrap the dataset in :class:`WithWeights`, and
every batch carries its indices and weights as its last two fields, so a batch and its weights can
never be mismatched by a loader that draws ahead.

Resuming: ``state_dict(batches_consumed=k)`` is the state after the first ``k`` batches
this sampler yielded since it was created or loaded (the loop's count; the last 4096
draws are remembered); without it, after every batch drawn so far (a loader with
workers draws ahead of the loop). The scores are the table as updated so far.
"""
import collections
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from . import _C

TemperatureSchedule = _C.TemperatureSchedule
temperature_probs = _C.temperature_probs
scalarization_weights = _C.scalarization_weights
variance_factor = _C.variance_factor
group_sizes = _C.group_sizes
weighted_mean_loss = _C.weighted_mean_loss
sampling_quality = _C.sampling_quality
effective_batch_increase = _C.effective_batch_increase
long_tailed_indices = _C.long_tailed_indices


class WithWeights(torch.utils.data.Dataset):
    """Wraps a dataset for :class:`ImportanceSampler`: the sampler's key ``(i, w)`` gives
    the dataset's item ``i`` followed by its index and weight, ``(*item, i, w)`` for a
    tuple item (else ``(item, i, w)``); a batch then reads ``x, y, index, weight``, the
    index for :meth:`ImportanceSampler.update` and the weight for the loss."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, float]):
        index, weight = key
        item = self.dataset[index]
        extra = (torch.tensor(index, dtype=torch.int64), torch.tensor(weight, dtype=torch.float32))
        return (*item, *extra) if isinstance(item, tuple) else (item, *extra)


class _BatchSampler(torch.utils.data.Sampler):
    """What both samplers share: epochs over the C++ sampler, and the counters before
    each draw (so that state_dict can name the state after any consumed batch)."""

    _counter_keys: Optional[Tuple[str, str]] = ("", "")

    def __init__(self, impl, batch_size: int, batches_per_epoch: int, num_samples: int, world: int = 1):
        if batch_size <= 0:
            raise ValueError(f"{type(self).__name__}: batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self._impl = impl
        # Batches an epoch (per rank): the ranks together see about num_samples an epoch.
        self._bpe = (int(batches_per_epoch) if batches_per_epoch > 0 else
                     -(-int(num_samples) // (int(world) * self.batch_size)))
        self._epoch_batch = 0
        self._resume = False
        # The counters before each of the last draws (a bounded deque: O(1) a batch).
        self._before: Deque[Tuple[int, int]] = collections.deque(maxlen=self._remembered)
        self._drawn = 0  # draws since creation or load

    _remembered = 4096

    def __len__(self) -> int:
        """Batches of the coming epoch (the rest of a loaded epoch)."""
        return self._bpe - self._epoch_batch if self._resume else self._bpe

    def _batches(self) -> Iterator[Any]:
        """The C++ draws of one epoch (the rest of a loaded epoch first)."""
        if not self._resume:
            self._impl.reset()
            self._epoch_batch = 0
        self._resume = False
        while True:
            before = (self._sequence(), self._epoch_batch)
            drawn = self._impl.draw(self.batch_size)
            if drawn is None:
                return
            self._before.append(before)
            self._drawn += 1
            self._epoch_batch += 1
            yield drawn

    def _sequence(self) -> int:
        raise NotImplementedError

    def state_dict(self, batches_consumed: Optional[int] = None) -> Dict[str, Any]:
        """The sampler's state (the C++ sampler's fields) after the batches drawn so far, or
        after the first ``batches_consumed`` batches drawn since creation or load."""
        if self._counter_keys is None:  # a distributed sampler: the C++ archive's bytes
            if batches_consumed is not None and batches_consumed != self._drawn:
                raise ValueError(f"{type(self).__name__}.state_dict: batches_consumed is not supported: "
                                 "its state is as of the batches drawn (use lag for loaders that draw ahead)")
            return {"sgdx_archive": self._impl.state()}
        state = self._impl.state()
        if batches_consumed is None or batches_consumed == self._drawn:
            return state
        first = self._drawn - len(self._before)  # the oldest draw still remembered
        if not first <= batches_consumed < self._drawn:
            raise ValueError(f"{type(self).__name__}.state_dict: batches_consumed must be in "
                             f"[{first}, {self._drawn}] (the batches drawn since this sampler was created or "
                             f"loaded, the last {self._remembered} remembered), got {batches_consumed}")
        state.update(dict(zip(self._counter_keys, self._before[batches_consumed - first])))
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continues from ``state``: the next iteration finishes the saved epoch."""
        if self._counter_keys is None:
            self._impl.load_state(state["sgdx_archive"])
            self._resume = True  # the C++ sampler knows where its epoch stands
        else:
            self._impl.load_state(state)
            self._epoch_batch = int(state["epoch_batch"])
            if int(state.get("batches_per_epoch", 0)) > 0:
                self._bpe = int(state["batches_per_epoch"])
            # Saved at an epoch's end: the next iteration is a fresh epoch.
            self._resume = self._epoch_batch < self._bpe
        self._before.clear()
        self._drawn = 0


class _ImportanceDraws(_BatchSampler):
    """What the one-process and distributed importance samplers share: batches of
    ``(index, weight)`` pairs, score updates and probabilities, over their C++ sampler."""

    def _sequence(self) -> int:
        return self._impl.taken()

    def __iter__(self) -> Iterator[List[Tuple[int, float]]]:
        for indices, weights in self._batches():
            yield list(zip(indices.tolist(), weights.tolist()))

    def update(self, indices: torch.Tensor, scores: torch.Tensor, beta: float = 0.0) -> None:
        """``s_i <- beta s_i + (1 - beta) score`` for each index; scores finite and >= 0.
        (DistributedImportanceSampler: collective, this rank's scores counted as the oldest
        batch not updated yet.)"""
        self._impl.update(torch.as_tensor(indices).to(torch.int64).cpu(),
                          torch.as_tensor(scores).detach().to(torch.float64).cpu(), float(beta))

    def probabilities(self, indices: torch.Tensor) -> torch.Tensor:
        """The current sampling probabilities ``p_i`` (float64)."""
        return self._impl.probabilities(torch.as_tensor(indices).to(torch.int64).cpu())


class _TemperatureDraws(_BatchSampler):
    """What the one-process and distributed temperature samplers share."""

    @staticmethod
    def _inputs(group_ids, schedule):
        """The C++ samplers' group ids (int64, CPU) and schedule (a constant tau allowed)."""
        if not isinstance(schedule, _C.TemperatureSchedule):
            schedule = _C.TemperatureSchedule.constant(float(schedule))
        return torch.as_tensor(group_ids).to(torch.int64).cpu(), schedule

    def _sequence(self) -> int:
        return self._impl.step()

    def __iter__(self) -> Iterator[List[int]]:
        for indices in self._batches():
            yield indices.tolist()

    def current_tau(self) -> float:
        return self._impl.current_tau()


class ImportanceSampler(_ImportanceDraws):
    """Importance sampling (Katharopoulos & Fleuret 2018): each batch draws ``batch_size``
    examples with replacement from ``p_i = (1 - mix) s_i / sum(s) + mix / N`` and yields
    ``(index, weight)`` pairs, ``weight = 1/(N p_i)`` (wrap the dataset in
    :class:`WithWeights`). Feed fresh scores with :meth:`update` (per-sample losses,
    gradient norms, or :func:`sgdx.ops.upper_bound_scores`); the mean of
    ``weight * loss`` (:func:`weighted_mean_loss`) is unbiased for the full-data loss.
    """

    _counter_keys = ("next_sequence", "epoch_batch")

    def __init__(self, num_samples: int, batch_size: int, mix: float = 0.1, seed: int = 0,
                 batches_per_epoch: int = 0, initial_score: float = 1.0):
        impl = _C.ImportanceSampler(int(num_samples), float(mix), int(seed), int(batches_per_epoch),
                                    float(initial_score))
        super().__init__(impl, batch_size, batches_per_epoch, num_samples)


class TemperatureSampler(_TemperatureDraws):
    """Temperature sampling (Li et al., NAACL 2025): each example of batch ``s`` is drawn
    by choosing a group from ``p(k; tau(s)) = n_k^(1/tau) / sum_j n_j^(1/tau)`` and then an
    example of that group uniformly. ``schedule``: a :class:`TemperatureSchedule`
    (``TemperatureSchedule.cooldown(total_steps, 5, 1)`` is Cooldown) or a constant tau.
    The batch number ``s`` counts over the sampler's life, so tau changes mid-epoch.
    Upweighting instead: uniform sampling with :func:`scalarization_weights` on the loss.
    """

    _counter_keys = ("step", "epoch_batch")

    def __init__(self, group_ids: torch.Tensor, batch_size: int,
                 schedule: Union[float, "_C.TemperatureSchedule"] = 1.0, seed: int = 0, batches_per_epoch: int = 0,
                 num_groups: int = 0, stream: int = 0):
        group_ids, schedule = self._inputs(group_ids, schedule)
        impl = _C.TemperatureSampler(group_ids, schedule, int(seed), int(batches_per_epoch), int(num_groups),
                                     int(stream))
        super().__init__(impl, batch_size, batches_per_epoch, group_ids.numel())

    @property
    def step(self) -> int:
        """Batches drawn so far (the step of the next batch)."""
        return self._impl.step()

    def sizes(self) -> List[int]:
        return self._impl.sizes()


class DistributedImportanceSampler(_ImportanceDraws):
    """Importance sampling across the ranks of ``comm`` (:func:`sgdx.dist.Communicator`;
    sgdx/data/distributed.h): every rank holds the same score table and draws its
    ``batch_size`` examples of each step from the same ``p`` with its own stream, so the
    union over ranks is a sample of ``world * batch_size`` and the weights keep the global
    estimator unbiased. :meth:`update` is collective: call it on every rank once per batch,
    in batch order (empty tensors when a rank has no scores). ``lag``: batch ``s`` is drawn
    from the table with the updates of batches ``0 .. s-1-lag``; a loader that draws ``P``
    batches ahead of the loop (``num_workers * prefetch_factor``) needs ``lag >= P``.
    ``batches_per_epoch = 0``: ``ceil(N / (world * batch_size))`` per rank."""

    _counter_keys = None

    def __init__(self, num_samples: int, batch_size: int, comm, mix: float = 0.1, seed: int = 0,
                 batches_per_epoch: int = 0, initial_score: float = 1.0, lag: int = 0):
        impl = _C.DistributedImportanceSampler(int(num_samples), comm, float(mix), int(seed), int(batches_per_epoch),
                                               float(initial_score), int(lag))
        super().__init__(impl, batch_size, batches_per_epoch, num_samples, comm.world_size())

    def scores(self) -> torch.Tensor:
        """The current table's scores, float64 [N] (the same on every rank)."""
        return self._impl.scores()


class DistributedTemperatureSampler(_TemperatureDraws):
    """Temperature sampling across the ranks of ``comm``: batch ``s`` of every rank uses
    ``tau(s)``; rank ``r`` draws with its own stream. :meth:`check_agreement` (collective)
    raises unless every rank is at the same step. ``batches_per_epoch = 0``:
    ``ceil(N / (world * batch_size))`` per rank."""

    _counter_keys = None

    def __init__(self, group_ids: torch.Tensor, batch_size: int, comm,
                 schedule: Union[float, "_C.TemperatureSchedule"] = 1.0, seed: int = 0, batches_per_epoch: int = 0,
                 num_groups: int = 0):
        group_ids, schedule = self._inputs(group_ids, schedule)
        impl = _C.DistributedTemperatureSampler(group_ids, schedule, comm, int(seed), int(batches_per_epoch),
                                                int(num_groups))
        super().__init__(impl, batch_size, batches_per_epoch, group_ids.numel(), comm.world_size())

    def check_agreement(self) -> None:
        self._impl.check_agreement()


__all__ = ["DistributedImportanceSampler", "DistributedTemperatureSampler", "ImportanceSampler", "TemperatureSampler", "TemperatureSchedule", "WithWeights", "temperature_probs",
           "scalarization_weights", "variance_factor", "group_sizes", "weighted_mean_loss", "sampling_quality",
           "effective_batch_increase", "long_tailed_indices"]
