"""Averaging gradients over the ranks without a wrapper: what ddp does for everything it trains, and
fsdp for the trained tensors outside FSDP (the discriminator head)."""
from __future__ import annotations

import torch
from torch import Tensor

# DDP's default bucket_cap_mb (25): gradients are all-reduced in flattened buckets this big; the memory plan counts one
BUCKET_BYTES = 25 * 2 ** 20


def average_gradients(params: list, world_size: int, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Average the gradients of ``params`` over the ranks: one all-reduce per bucket of up to
    ``bucket_bytes`` (consecutive gradients of one dtype and device, flattened).  Parameters
    without a gradient are left out (the same ones on every rank: every rank runs the same code)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world_size <= 1 or not grads:
        return
    bucket: list[Tensor] = []
    size = 0
    for g in grads:
        if bucket and (size + g.numel() * g.element_size() > bucket_bytes
                       or (g.dtype, g.device) != (bucket[0].dtype, bucket[0].device)):
            _all_reduce_mean(bucket, world_size)
            bucket, size = [], 0
        bucket.append(g)
        size += g.numel() * g.element_size()
    _all_reduce_mean(bucket, world_size)


def _all_reduce_mean(grads: list[Tensor], world_size: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat.div_(world_size)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))
