"""Moving nested conditions (dataclasses, lists, dicts of tensors) to a device, without Lightning."""
from __future__ import annotations

import dataclasses

import torch


def to_device(data, device):
    """``data`` with every tensor (and every object with a ``.to``) moved to ``device``; containers and
    dataclasses are rebuilt, anything else is returned as it is (Lightning's move_data_to_device, which
    the layers below training/ may not import)."""
    device = torch.device(device)
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=device.type == "cuda")
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.replace(data, **{f.name: to_device(getattr(data, f.name), device)
                                            for f in dataclasses.fields(data) if f.init})
    if isinstance(data, dict):
        return type(data)({k: to_device(v, device) for k, v in data.items()})
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # a namedtuple
        return type(data)(*(to_device(v, device) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(to_device(v, device) for v in data)
    if callable(getattr(data, "to", None)) and not isinstance(data, torch.nn.Module):
        return data.to(device)
    return data
