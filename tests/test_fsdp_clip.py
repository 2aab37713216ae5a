"""Gradient clipping under FSDP2 (parallel/fsdp2.clip_global) on two gloo ranks: a sharded model's DTensor
gradients and a replicated head's plain ones, clipped by one global norm, equal torch's clip_grad_norm_ on
the whole tensors in one process.  The norm is made smaller than the gradients' so the clip acts."""
import os
import socket

import torch
import torch.multiprocessing as mp


def _grads(seed: int = 0) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 4, generator=g), torch.randn(6, generator=g)], [torch.randn(3, 3, generator=g)]


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from ddmd_lab.parallel.fsdp2 import clip_global

    mesh = init_device_mesh("cpu", (2,))
    model = torch.nn.Linear(4, 6)
    fully_shard(model, mesh=mesh)
    head = torch.nn.Parameter(torch.zeros(3, 3))
    sharded_grads, (head_grad,) = _grads()
    for p, g in zip(model.parameters(), sharded_grads):  # the whole gradient, split as FSDP2 holds it
        p.grad = distribute_tensor(g, mesh, [Shard(0)])
    head.grad = head_grad.clone()
    params = list(model.parameters()) + [head]
    assert all(isinstance(p.grad, DTensor) for p in model.parameters())
    norm = clip_global(params, max_norm=1.0)
    clipped = [p.grad.full_tensor() for p in model.parameters()] + [head.grad]
    if rank == 0:
        torch.save({"norm": norm, "clipped": clipped}, out)
    torch.distributed.destroy_process_group()


def test_clip_global_over_dtensor_and_replicated_grads_equals_the_whole(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "clipped.pt")
    mp.spawn(_rank, args=(port, out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    sharded, replicated = _grads()
    whole = [torch.nn.Parameter(torch.zeros_like(g)) for g in sharded + replicated]
    for p, g in zip(whole, sharded + replicated):
        p.grad = g.clone()
    norm = torch.nn.utils.clip_grad_norm_(whole, max_norm=1.0)
    assert norm > 2.0  # the clip acts
    torch.testing.assert_close(got["norm"], norm)
    for a, p in zip(got["clipped"], whole):
        torch.testing.assert_close(a, p.grad)
