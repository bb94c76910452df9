"""Built-in metric loggers, created on rank 0 only, each with options under
``logging.options.NAME`` (``--set logging.options.NAME.KEY=VALUE``):

* ``jsonl``: ``OUT/logs/metrics.jsonl``, one JSON object per line with ``step``, ``time``
  and the flat metric keys (no options);
* ``tensorboard``: ``OUT/logs/tensorboard/`` (``flush_secs``);
* ``mlflow``: an MLflow run (``tracking_uri``, default a local file store in
  ``OUT/logs/mlruns``; ``experiment``; ``run_name``): the metrics, and the resolved
  config as parameters. Needs ``pip install mlflow-skinny`` (or ``mlflow``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..specs import LoggerSpec

if TYPE_CHECKING:
    from ..config import RunConfig


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric (non-bool) metrics as floats."""
    out = {}
    for key, value in metrics.items():
        value = value.item() if hasattr(value, "item") else value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


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


@dataclass(frozen=True)
class TensorBoardOptions:
    """``logging.options.tensorboard``."""

    flush_secs: int = 120  # SummaryWriter's flush interval (also flushed after every log call)


class TensorBoardLogger:
    """Scalars under ``log_dir/tensorboard`` with tags ``train/<key>`` and ``eval/<key>``
    (a named set's ``eval/NAME/bpb`` keeps its key as the tag)."""

    def __init__(self, log_dir: Path, options: TensorBoardOptions | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir / "tensorboard"), flush_secs=(options or TensorBoardOptions()).flush_secs)

    def log(self, metrics, step):
        for key, value in scalars(metrics).items():
            if key.startswith("eval/"):
                tag = key  # a named eval set: eval/NAME/bpb
            else:
                tag = f"eval/{key}" if key.startswith("eval_") else f"train/{key}"
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


@dataclass(frozen=True)
class MLflowOptions:
    """``logging.options.mlflow``."""

    tracking_uri: str = ""  # "" = local file store OUT/logs/mlruns; or file:/..., sqlite:///..., http://...
    experiment: str = "cptcore"
    run_name: str = ""  # "" = the OUT folder's name


class MLflowLogger:
    """One MLflow run per ``cpt train`` (a resumed run starts a new MLflow run with the
    same name). Metrics with their optimizer step; the resolved config as parameters
    (dotted keys). The local file store is in MLflow's maintenance mode from 3.x: this
    logger sets ``MLFLOW_ALLOW_FILE_STORE=true`` (unless already set) for ``file:`` URIs."""

    def __init__(self, log_dir: Path, config: "RunConfig", options: MLflowOptions | None = None):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ConfigError("logger 'mlflow' needs the mlflow package: pip install mlflow-skinny") from exc
        opts = options or MLflowOptions()
        uri = opts.tracking_uri or (log_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._metric = Metric
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(opts.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(opts.experiment)
        name = opts.run_name or Path(config.training.out_dir).name
        self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in _flat(config.to_dict()).items()]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, metrics, step):
        stamp = int(time.time() * 1000)
        batch = [self._metric(k, v, stamp, int(step)) for k, v in scalars(metrics).items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self):
        self.client.set_terminated(self.run_id)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@hookimpl
def cpt_register_loggers():
    return [
        LoggerSpec(name="jsonl", create=lambda log_dir, config, options: JsonlLogger(Path(log_dir)),
                   description="one JSON object per line in OUT/logs/metrics.jsonl"),
        LoggerSpec(name="tensorboard", options=TensorBoardOptions,
                   create=lambda log_dir, config, options: TensorBoardLogger(Path(log_dir), options),
                   description="TensorBoard scalars in OUT/logs/tensorboard/"),
        LoggerSpec(name="mlflow", options=MLflowOptions,
                   create=lambda log_dir, config, options: MLflowLogger(Path(log_dir), config, options),
                   description="an MLflow run (local file store OUT/logs/mlruns by default; needs mlflow-skinny)"),
    ]
