"""A sharded checkpoint: a torch.distributed.checkpoint (DCP) folder in which each rank writes and reads
only its own shards, plus ``meta.pt``, the small rest, written by global rank 0.

What goes to DCP: the module's state dict as the ranks hold it (DTensor shards; a replicated tensor such
as the discriminator head is written once), both AdamW states (``get_optimizer_state_dict``: keyed by
parameter name, their moments sharded like the parameters), and the generator's weight average
(``ddmd_ema``'s ``average``: one tensor per generator parameter name, sharded the same way).  Nothing
is gathered: a rank's host holds at most its own shards at a save or a load.  What goes to meta.pt:
everything else of Lightning's checkpoint (counters, every rank's RNG state, config, loops, callbacks).

A folder is read back on the same number of ranks by ``load_sharded`` (exact resume), or on one host
without a process group by training/sharded_checkpoint.consolidate (the single-file student).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from ddmd_lab.errors import UserError
from ddmd_lab.util.io import safe_torch_load

META = "meta.pt"  # the non-tensor rest of a sharded checkpoint, beside DCP's files
SHARDED_ENTRIES = ("state_dict", "ddmd_ema")  # DCP's top-level keys besides optimizer_<i>


def save_sharded(checkpoint: dict, path: str, rank: int) -> None:
    """Write ``checkpoint`` (Lightning's dict, as ShardedFSDP2 collects it) into the folder ``path``:
    this rank's shards by DCP, the rest by rank 0.  Every rank calls it (DCP's plan is a collective)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": checkpoint.pop("state_dict")}
    for i, optimizer in enumerate(checkpoint.pop("optimizer_states", [])):
        state[f"optimizer_{i}"] = optimizer
    ema = checkpoint.get("ddmd_ema")
    if isinstance(ema, dict) and "average" in ema:
        state["ddmd_ema"] = ema.pop("average")
    dcp.save(state, checkpoint_id=path)
    if rank == 0:
        torch.save(checkpoint, path / META)


def read_meta(path: Path) -> dict:
    """meta.pt of a sharded checkpoint folder (counters, config, RNG: no weights)."""
    path = Path(path)
    if not (path / META).is_file():
        raise UserError(f"{path} has no {META}, so it is not a whole sharded checkpoint (a kill during its write "
                        "leaves a .tmp folder instead); resume from the run folder, which picks its last whole one.")
    return safe_torch_load(path / META, "resume from a checkpoint folder ddmd_lab wrote", "checkpoint metadata")


def stored_keys(path: Path) -> set[str]:
    """The flattened keys DCP stored in ``path`` (e.g. ``state_dict.generator.unet.conv_in.weight``)."""
    return set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def load_sharded(path: str, model, optimizers: list) -> dict:
    """Read a folder written by save_sharded into ``model`` and ``optimizers`` in place (each rank its
    own shards) and return its meta dict, with ``ddmd_ema["average"]`` as {parameter name: tensor as
    this rank holds it} for DistillModule.on_load_checkpoint.  The module's load_state_dict checks
    that what is missing is exactly the frozen teacher."""
    path = Path(path)
    if path.is_file():
        raise UserError(f"{path} is a single-file checkpoint (written by strategy=ddp, one device, or the legacy "
                        "FSDP before sharded checkpoints); resume it with the strategy that wrote it, or start a new run.")
    meta = read_meta(path)
    keys = stored_keys(path)
    own = model.state_dict()
    state: dict = {"state_dict": {k: v for k, v in own.items() if f"state_dict.{k}" in keys}}
    for i, optimizer in enumerate(optimizers):
        state[f"optimizer_{i}"] = get_optimizer_state_dict(model, optimizer)  # a template: its fresh state
    params = dict(model.named_parameters())
    prefix = "ddmd_ema."
    averaged = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    if averaged:
        state["ddmd_ema"] = {name: torch.empty_like(params[name].detach()) for name in averaged}
    dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state["state_dict"])
    for i, optimizer in enumerate(optimizers):
        set_optimizer_state_dict(model, optimizer, state[f"optimizer_{i}"])
    if averaged:
        meta["ddmd_ema"]["average"] = state["ddmd_ema"]
    return meta
