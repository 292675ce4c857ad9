"""sgdx.data samplers: the importance weights are unbiased (a statistical test with a
stated tolerance), batches and weights stay together under worker prefetching, the
temperature sampler draws groups with p(k; tau) (chi-square), Cooldown switches at
half, and state_dict resumes exactly."""
import math

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import sgdx
from sgdx.data import ImportanceSampler, TemperatureSampler, TemperatureSchedule, WithWeights


class Indexed(Dataset):
    """Item i is (i, f(i)) so a batch names the items it holds."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(i), torch.tensor(math.sin(i) + 2.0, dtype=torch.float64)


def test_importance_weights_are_one_over_n_p_and_unbiased():
    n, b = 50, 32
    sampler = ImportanceSampler(n, b, mix=0.2, seed=4, batches_per_epoch=400)
    scores = torch.linspace(0.1, 5.0, n, dtype=torch.float64)
    sampler.update(torch.arange(n), scores)
    p = sampler.probabilities(torch.arange(n))
    want_p = 0.8 * scores / scores.sum() + 0.2 / n
    torch.testing.assert_close(p, want_p, rtol=1e-14, atol=0)
    f = torch.tensor([math.sin(i) + 2.0 for i in range(n)], dtype=torch.float64)
    estimates = []
    for batch in sampler:
        idx = torch.tensor([i for i, _ in batch])
        w = torch.tensor([w for _, w in batch], dtype=torch.float64)
        torch.testing.assert_close(w, 1 / (n * p[idx]), rtol=1e-6, atol=0)  # float32 weights
        estimates.append((w * f[idx]).mean())
    est = torch.stack(estimates)
    se = est.std() / math.sqrt(len(est))
    # E[w f(I)] = sum_i p_i f_i / (N p_i) = mean f: 5 standard errors (400 batches).
    assert abs(est.mean() - f.mean()) < 5 * se, (est.mean().item(), f.mean().item(), se.item())


@pytest.mark.parametrize("workers", [0, 2])
def test_weights_travel_with_their_batch_under_prefetch(workers):
    n, b = 40, 8
    sampler = ImportanceSampler(n, b, mix=0.3, seed=1, batches_per_epoch=12)
    yielded = []

    class Recording(ImportanceSampler):
        pass

    original = sampler._batches

    def recording():
        for drawn in original():
            yielded.append(drawn)
            yield drawn

    sampler._batches = recording
    loader = DataLoader(WithWeights(Indexed(n)), batch_sampler=sampler, num_workers=workers,
                        prefetch_factor=4 if workers else None)
    got = []
    for k, (item, _, idx, w) in enumerate(loader):
        assert torch.equal(item, idx)  # the index WithWeights appends is the item's
        got.append((idx, w))
        # New scores after every batch change p: batches drawn ahead keep their own weights.
        sampler.update(idx, torch.rand(len(idx), dtype=torch.float64) * (k + 1))
    assert len(got) == len(yielded) == 12
    for (idx, w), (want_idx, want_w) in zip(got, yielded):
        assert torch.equal(idx, want_idx)
        assert torch.equal(w, want_w)


def epochs(sampler):
    """Batches over epochs, as a training loop takes them."""
    while True:
        yield from sampler


def run_sampler(sampler, it, batches, update):
    out = []
    for k in range(batches):
        batch = next(it)
        out.append(batch)
        if update:
            idx = torch.tensor([i for i, _ in batch])
            sampler.update(idx, torch.full((len(idx),), float(k + 1), dtype=torch.float64))
    return out


def test_importance_state_dict_resumes_exactly():
    a = ImportanceSampler(30, 5, seed=2)  # 6 batches an epoch
    stream = epochs(a)
    first = run_sampler(a, stream, 4, update=True)
    state = a.state_dict()
    rest = run_sampler(a, stream, 5, update=True)  # crosses the epoch's end
    b = ImportanceSampler(30, 5, seed=2)
    b.load_state_dict(state)
    assert run_sampler(b, epochs(b), 5, update=True) == rest
    assert first != rest


def test_state_dict_after_consumed_batches_ignores_batches_drawn_ahead():
    a = TemperatureSampler(torch.arange(40) % 4, 4, schedule=2.0, seed=3)
    it = iter(a)
    drawn = [next(it) for _ in range(6)]  # a loader drew 6, the loop consumed 3
    state = a.state_dict(batches_consumed=3)
    b = TemperatureSampler(torch.arange(40) % 4, 4, schedule=2.0, seed=3)
    b.load_state_dict(state)
    assert [batch for _, batch in zip(range(3), b)] == drawn[3:]
    with pytest.raises(ValueError, match="batches_consumed must be in"):
        a.state_dict(batches_consumed=7)


def test_temperature_groups_follow_p_tau_and_cooldown_switches():
    sizes = [400, 100, 25, 5]
    groups = torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])
    total = 400
    sampler = TemperatureSampler(groups, 64, schedule=TemperatureSchedule.cooldown(total, 5.0, 1.0), seed=9,
                                 batches_per_epoch=total)
    counts = {5.0: torch.zeros(4), 1.0: torch.zeros(4)}
    for s, batch in enumerate(sampler):
        tau = 5.0 if s < total // 2 else 1.0
        counts[tau] += torch.bincount(groups[torch.tensor(batch)], minlength=4).double()
    for tau, c in counts.items():
        p = torch.tensor(sizes, dtype=torch.float64) ** (1 / tau)
        p /= p.sum()
        torch.testing.assert_close(sgdx.data.temperature_probs(sizes, tau), p, rtol=1e-14, atol=0)
        expected = p * c.sum()
        chi2 = ((c - expected) ** 2 / expected).sum().item()
        assert chi2 < 16.27, (tau, chi2)  # chi-square, 3 degrees of freedom, 0.999 quantile
    assert sampler.current_tau() == 1.0


def test_temperature_sampler_with_workers_matches_without():
    groups = torch.arange(60) % 3
    loaders = [DataLoader(Indexed(60), batch_sampler=TemperatureSampler(groups, 6, schedule=3.0, seed=5),
                          num_workers=w) for w in (0, 2)]
    a = [idx for idx, _ in loaders[0]]
    b = [idx for idx, _ in loaders[1]]
    assert len(a) == 10 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_bad_sampler_input_is_refused_by_name():
    with pytest.raises(RuntimeError, match=r"mix \(eps\) must be in \(0, 1\], got 0"):
        ImportanceSampler(10, 2, mix=0.0)
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        ImportanceSampler(10, 0)
    s = ImportanceSampler(10, 2)
    with pytest.raises(RuntimeError, match="score"):
        s.update(torch.tensor([1]), torch.tensor([-1.0]))
    with pytest.raises(RuntimeError):
        TemperatureSampler(torch.tensor([0, 2]), 2)  # group 1 is empty


def test_resume_at_an_epoch_end_starts_a_fresh_epoch_and_len_counts_the_rest():
    a = TemperatureSampler(torch.arange(20) % 2, 5, seed=1)  # 4 batches an epoch
    list(a)
    b = TemperatureSampler(torch.arange(20) % 2, 5, seed=1)
    b.load_state_dict(a.state_dict())
    assert len(b) == 4 and len(list(b)) == 4
    it = iter(a)
    next(it)
    c = TemperatureSampler(torch.arange(20) % 2, 5, seed=1)
    c.load_state_dict(a.state_dict())
    assert len(c) == 3 and list(c) == [batch for batch in it]
