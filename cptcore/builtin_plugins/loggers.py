"""Built-in metric loggers ``tensorboard`` (``OUT/logs/tensorboard/``) and ``jsonl``
(``OUT/logs/metrics.jsonl``: one JSON object per line with ``step``, ``time`` and the
flat metric keys). Created on rank 0 only."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..hookspecs import hookimpl
from ..specs import LoggerSpec


class JsonlLogger:
    """Appends ``{"step": int, "time": unix seconds, **metrics}`` lines to
    ``log_dir/metrics.jsonl`` (flushed per line, so a killed run keeps what it logged)."""

    def __init__(self, log_dir: Path):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / "metrics.jsonl"
        self._f = open(self.path, "a", encoding="utf-8")

    def log(self, metrics, step):
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()})
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self):
        self._f.close()


class TensorBoardLogger:
    """Scalars under ``log_dir/tensorboard`` with tags ``train/<key>`` and ``eval/<key>``
    (a named set's ``eval/NAME/bpb`` keeps its key as the tag)."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir / "tensorboard"))

    def log(self, metrics, step):
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if key.startswith("eval/"):
                    tag = key  # a named eval set: eval/NAME/bpb
                else:
                    tag = f"eval/{key}" if key.startswith("eval_") else f"train/{key}"
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


@hookimpl
def cpt_register_loggers():
    return [
        LoggerSpec(name="jsonl", create=lambda log_dir, config: JsonlLogger(Path(log_dir)),
                   description="one JSON object per line in OUT/logs/metrics.jsonl"),
        LoggerSpec(name="tensorboard", create=lambda log_dir, config: TensorBoardLogger(Path(log_dir)),
                   description="TensorBoard scalars in OUT/logs/tensorboard/"),
    ]
