"""Checkpoints: ``OUT/checkpoints/step-N/``, written atomically, keep-last-K, exact resume.

Layout of ``step-N/``::

    model/            strategy's sharded model I/O (booster.save_model(shard=True))
    optimizer/        strategy's sharded optimizer I/O
    lr_scheduler.pt   LR scheduler state (last_epoch = updates done)
    adapter/          peft adapter (LoRA runs only), PeftModel.from_pretrained-loadable
    rng/rank-R.pt     python, numpy and torch RNG states of rank R
    config.yaml       the resolved run config
    trainer_state.json  step, epoch, tokens_seen, micro_batches, sampler position,
                      world_size; written LAST: its presence marks a complete checkpoint

Every rank writes into ``step-N.tmp/``; after a barrier rank 0 writes
``trainer_state.json`` and renames the folder to ``step-N`` (``os.rename`` is atomic on
one filesystem), then deletes all but the newest ``keep_last`` complete checkpoints.
A run killed mid-save leaves only a ``.tmp`` folder, which resume ignores and the next
save of that step replaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import CptError

STATE = "trainer_state.json"
_STEP = re.compile(r"^step-(\d+)$")


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (``step-N`` folders with ``trainer_state.json``), oldest first."""
    d = checkpoints_dir(out_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _STEP.match(p.name)
        if m and p.is_dir() and (p / STATE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def validate_checkpoint(path: str | Path, world_size: int | None = None) -> dict:
    """Check a checkpoint folder is complete before any heavy work; return its state.

    Raises:
        CptError: one line naming the folder and what is missing or corrupt.
    """
    p = Path(path)
    if not p.is_dir():
        raise CptError(f"checkpoint not found: {p}")
    state_file = p / STATE
    if not state_file.is_file():
        raise CptError(f"{p}: incomplete checkpoint (no {STATE}; the save was interrupted)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        int(state["step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CptError(f"{state_file}: corrupt trainer state ({exc})") from exc
    needed = ["model", "optimizer", "lr_scheduler.pt", "config.yaml"]
    needed += [f"rng/rank-{r}.pt" for r in range(int(state.get("world_size", 1)))]
    for rel in needed:
        if not (p / rel).exists():
            raise CptError(f"{p}: incomplete checkpoint, missing {rel}")
    for sub in ("model", "optimizer"):
        index = list((p / sub).glob("*.index.json"))
        for idx in index:
            try:
                files = set(json.loads(idx.read_text())["weight_map"].values())
            except (ValueError, KeyError) as exc:
                raise CptError(f"{idx}: corrupt index ({exc})") from exc
            for f in files:
                if not (p / sub / f).is_file():
                    raise CptError(f"{p}: incomplete checkpoint, {sub}/{f} is missing")
    if world_size is not None and int(state.get("world_size", 1)) != world_size:
        raise CptError(
            f"{p}: saved with {state.get('world_size')} processes, this run has {world_size}; resume with the same world size"
        )
    return state


def resolve_resume(resume: str | None, out_dir: str | Path) -> Path | None:
    """``None`` -> None; ``"auto"`` -> newest complete checkpoint of ``out_dir`` or None;
    a path -> that folder (validated later)."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(out_dir)
        return found[-1] if found else None
    return Path(resume)


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save_checkpoint(
    out_dir: str | Path, step: int, strategy: Any, model: Any, optimizer: Any, scheduler: Any,
    trainer_state: dict, config: Any, keep_last: int, hf_model: Any = None,
) -> Path:
    """Write ``OUT/checkpoints/step-{step}`` atomically (see the module docstring). Called
    on every rank. Returns the final folder."""
    import torch

    from ..config import write_resolved
    from .export import is_peft

    rank, world = _rank_world()
    final = checkpoints_dir(out_dir) / f"step-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "rng").mkdir(parents=True)
    _barrier()
    strategy.save(tmp, model, optimizer, scheduler)
    torch.save(rng_state(), tmp / "rng" / f"rank-{rank}.pt")
    if rank == 0:
        write_resolved(config, tmp)
        if hf_model is not None and is_peft(hf_model):
            hf_model.save_pretrained(str(tmp / "adapter"))
    _barrier()
    if rank == 0:
        state = dict(trainer_state, step=step, world_size=world)
        (tmp / STATE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        for stale in checkpoints_dir(out_dir).glob("step-*.tmp"):  # left by a killed save
            shutil.rmtree(stale, ignore_errors=True)
        prune(out_dir, keep_last)
    _barrier()
    return final


def prune(out_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (``keep_last <= 0``
    keeps all). Returns the deleted folders."""
    if keep_last <= 0:
        return []
    found = list_checkpoints(out_dir)
    doomed = found[:-keep_last]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def load_checkpoint(path: Path, strategy: Any, model: Any, optimizer: Any, scheduler: Any) -> dict:
    """Restore model, optimizer, scheduler (through the strategy) and this rank's RNG
    states; return the trainer state (the caller restores the sampler and counters).
    Call after :func:`validate_checkpoint`."""
    import torch

    rank, world = _rank_world()
    state = validate_checkpoint(path, world)
    with unreadable_as_error(path):
        strategy.load(path, model, optimizer, scheduler)
        set_rng_state(torch.load(path / "rng" / f"rank-{rank}.pt", weights_only=False))
    return state


@contextlib.contextmanager
def unreadable_as_error(path: Path):
    """Turn a failure to read a checkpoint's files (truncated or overwritten ``.pt``/
    ``.bin`` shards: pickle, zip, EOF or size errors from torch) into one line.

    Raises:
        CptError: ``PATH: corrupt checkpoint, cannot read it (ErrorType: message)``.
    """
    try:
        yield
    except CptError:
        raise
    except Exception as exc:  # torch.load raises many types on damaged files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CptError(f"{path}: corrupt checkpoint, cannot read it ({type(exc).__name__}: {first})") from exc
