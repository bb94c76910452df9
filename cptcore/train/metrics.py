"""Metric helpers: peak memory, rank-0 loggers and the rich progress bar."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence
from .mfu import Meter, attended_positions, count_n, flops_model, resolve_peak
from .plan import log

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


def mfu_meter(trainer: Any) -> Any:
    """The :class:`cptcore.train.mfu.Meter` of a set-up Trainer (``None`` when no peak is
    known: an accelerator missing from :data:`cptcore.train.mfu.PEAKS` without
    ``training.peak_flops``; logged once). ``N`` from the unwrapped module
    (:func:`~cptcore.train.mfu.count_n`), devices = the world size."""
    import torch

    device = trainer.strategy.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    peak, source = resolve_peak(trainer.config.training.peak_flops, device.type, name, trainer.strategy.precision, tf32)
    if peak is None:
        log(f"MFU not logged: {source}")
        return None
    model = trainer.hf_model
    flops = flops_model(model.config, getattr(trainer, "mfu_n", None) or count_n(model))
    log(f"MFU over {peak:.3g} FLOP/s per device ({source}); N = {flops.n_params:,} matmul parameters")
    return Meter(flops, peak, trainer.plan.world_size, bool(trainer.config.model.gradient_checkpointing), source)


def mfu_metrics(meter: Any, batches: Sequence[Any], tokens: int, seconds: float) -> dict:
    """``{"mfu", "hfu", "model_flops"}`` of one step (empty without a meter): ``tokens``
    (non-pad, all data-parallel ranks) over ``seconds``; the attended positions
    (:func:`cptcore.train.mfu.attended_positions`, per document) are this rank's
    micro-batches' scaled to ``tokens`` (ranks' rows are alike; saves a collective)."""
    if meter is None:
        return {}

    local, attended = 0, 0
    for b in batches:
        ids = b["input_ids"]
        lengths = b["lengths"] if "lengths" in b else [ids.shape[1]] * ids.shape[0]
        local += int(sum(int(x) for x in lengths))
        pos = b["position_ids"] if "position_ids" in b else [list(range(ids.shape[1]))] * ids.shape[0]
        attended += attended_positions(pos, lengths)
    attended_all = attended * tokens / local if local else 0.0
    return {"mfu": meter.mfu(tokens, attended_all, seconds), "hfu": meter.hfu(tokens, attended_all, seconds),
            "model_flops": meter.flops.model_flops(tokens, attended_all)}


def mean_mfu(meter: Any, model_flops: float, seconds: float) -> float | None:
    """Run MFU for ``summary.json``: all steps' model FLOPs over their summed time."""
    if meter is None or seconds <= 0:
        return None
    return model_flops / (seconds * meter.devices * meter.peak)


def progress_info(metrics: Mapping[str, Any]) -> str:
    """The progress line's text: ``loss 2.3456, 1,234 tok/s, MFU 41.2%`` (MFU when known)."""
    mfu = f", MFU {metrics['mfu']:.1%}" if "mfu" in metrics else ""
    return f"loss {metrics['loss']:.4f}, {metrics.get('tokens_per_second', 0.0):,.0f} tok/s{mfu}"
