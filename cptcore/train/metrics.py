"""Metric helpers: peak memory, rank-0 loggers and the rich progress bar."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from ..config import RunConfig
    from .plan import Choice


def peak_memory_mb(device: Any = None) -> float:
    """Peak memory in MiB: ``torch.cuda.max_memory_allocated`` on CUDA, else the
    process's peak resident set size (``ru_maxrss``, KiB on Linux)."""
    import torch

    if device is not None and getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_loggers(choices: Sequence["Choice"], log_dir: Path, config: "RunConfig") -> list:
    """Create the planned loggers (:attr:`cptcore.train.plan.Plan.loggers`: spec and
    parsed options each). Call on rank 0 only. ``create(log_dir, config, options)``; a
    ``create`` that takes two arguments gets no options (a logger without options)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for choice in choices:
        try:
            takes_options = len(inspect.signature(choice.spec.create).parameters) >= 3
        except (TypeError, ValueError):
            takes_options = True
        args = (log_dir, config, choice.options) if takes_options else (log_dir, config)
        out.append(choice.spec.create(*args))
    return out


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop lines of ``metrics.jsonl`` with ``step > last_step`` (what a killed run logged
    after the checkpoint it is resumed from), so the file reads as one run."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= last_step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue
    path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")


class Progress:
    """A rich progress bar with ETA over optimizer steps (rank 0, when enabled)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self._p = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._p = RichProgress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(file=sys.stderr), transient=False,
        )
        self._p.start()
        self._task = self._p.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, info: str) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
