"""Data-parallel sgdx from Python: two processes (Gloo over 127.0.0.1 with a file store, one thread each)
on a torch.distributed group. Two ranks on halves of a batch take the steps of one
process on the whole batch; the distributed samplers' tables agree across ranks."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import sgdx

DT = torch.float64


def model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(DT)


def data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(40, 6, generator=g, dtype=DT), torch.randint(0, 3, (40,), generator=g)


def one_process_run(steps):
    """GradQueue-SGDM on the whole batch of each step, one process."""
    m = model(0)
    opt = sgdx.optim.GradQueueSGDM(m.parameters(), lr=0.1, q_min=2, q_init=3, q_max=5)
    X, Y = data()
    for k in range(steps):
        idx = torch.arange(8 * k, 8 * k + 8) % 40
        opt.zero_grad()
        loss = F.cross_entropy(m(X[idx]), Y[idx])
        loss.backward()
        opt.step(lambda: loss.detach())
    return [p.detach() for p in m.parameters()]


def worker(rank, out):
    torch.set_num_threads(1)
    # A file store: no TCP store server thread in rank 0, whose teardown at exit (torch's,
    # not sgdx's) aborted about one run in ten with "terminate called without an active
    # exception" while the other rank was still connected.
    dist.init_process_group("gloo", init_method="file://" + os.path.join(out, "store"), rank=rank, world_size=2)
    try:
        comm = sgdx.dist.Communicator()
        assert (comm.rank(), comm.world_size()) == (rank, 2)
        m = model(rank)  # different starts: broadcast_parameters makes them rank 0's
        ddp = sgdx.dist.DataParallel(list(m.parameters()), comm, bucket_bytes=256)
        ddp.broadcast_parameters()
        opt = sgdx.optim.GradQueueSGDM(m.parameters(), lr=0.1, q_min=2, q_init=3, q_max=5)
        opt.set_communicator(comm)
        X, Y = data()
        for k in range(10):
            idx = (torch.arange(8 * k, 8 * k + 8) % 40)[4 * rank:4 * rank + 4]  # this rank's half
            opt.zero_grad()
            loss = F.cross_entropy(m(X[idx]), Y[idx])
            loss.backward()
            ddp.average_gradients()
            opt.step(lambda: loss.detach())  # the window follows the mean loss over ranks
        params = [p.detach().clone() for p in m.parameters()]

        # Importance sampling across ranks: same table on every rank, own draws.
        s = sgdx.data.DistributedImportanceSampler(20, 4, comm, seed=3, batches_per_epoch=5)
        draws = []
        for batch in s:
            idx = torch.tensor([i for i, _ in batch])
            draws.append(idx)
            s.update(idx, torch.rand(4, dtype=DT) + rank)
        t = sgdx.data.DistributedTemperatureSampler(torch.arange(30) % 3, 5, comm,
                                                    schedule=sgdx.data.TemperatureSchedule.cooldown(6), seed=1,
                                                    batches_per_epoch=6)
        tdraws = list(t)
        t.check_agreement()
        torch.save({"params": params, "scores": s.scores(), "draws": draws, "tdraws": tdraws,
                    "tau": t.current_tau()}, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()  # both ranks are done with the group before it goes
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_ranks_equal_one_process_and_samplers_agree():
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(out,), nprocs=2, join=True)
        r0, r1 = (torch.load(os.path.join(out, f"rank{r}.pt")) for r in (0, 1))
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)  # the ranks stay bit-identical
    for a, b in zip(r0["params"], one_process_run(10)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    assert torch.equal(r0["scores"], r1["scores"])
    assert not torch.equal(r0["scores"], torch.ones(20, dtype=DT))  # the updates arrived
    assert any(not torch.equal(a, b) for a, b in zip(r0["draws"], r1["draws"]))  # own streams
    assert r0["tdraws"] != r1["tdraws"] and r0["tau"] == r1["tau"] == 1.0
