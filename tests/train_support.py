"""Helpers for the training tests: a tiny LLaMA with SmolLM2's tokenizer, prepared data
made by the data pipeline, and a run config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"


def tiny_model(out: Path, tokenizer_dir: Path, **kw: Any) -> Path:
    from cptcore.testing import make_tiny_llama

    if not (out / "config.json").is_file():
        make_tiny_llama(out, tokenizer_dir, **kw)
    return out


def prepare(out: Path, tokenizer_dir: Path, inputs: list[str], max_length: int = 64,
            packer: str = "splice", kind: str = "pretrain", **kw: Any) -> Path:
    """Run ``cpt prepare`` (library form) into ``out``; returns ``out``."""
    from cptcore.data.pipeline import PrepareArgs, prepare as run
    from cptcore.plugins import make_plugin_manager

    if (out / "manifest.json").is_file():
        return out
    args = PrepareArgs(kind=kind, tokenizer=str(tokenizer_dir), inputs=tuple(inputs), out=str(out),
                       max_length=max_length, packer=packer, **kw)
    run(make_plugin_manager(entrypoints=False), args)
    return out


def run_config(out: Path, model: Path, train: list[str], eval_: list[str] | None = None, **sets: Any):
    """A RunConfig for a fast CPU run; ``sets`` are dotted overrides."""
    from cptcore.config import load_config

    overrides = {
        "model.path": str(model), "data.train": train, "data.eval": eval_ or [],
        "training.out_dir": str(out), "training.max_steps": 4, "training.micro_batch_size": 2,
        "optimizer.lr": 1e-3, "schedule.warmup_steps": 1, "logging.progress": False,
        "optimizer.weight_decay": 0.1,
    }
    overrides.update({k.replace("__", "."): v for k, v in sets.items()})
    return load_config(None, overrides=overrides)


# A logger plugin that SIGKILLs its own process when it logs step $CPT_TEST_KILL_AT:
# the kill-and-resume tests load it with `cpt --plugin killer.py`.
KILLER_PLUGIN = '''
import os, signal
from cptcore.hookspecs import hookimpl
from cptcore.specs import LoggerSpec

class _Killer:
    def log(self, metrics, step):
        if step == int(os.environ.get("CPT_TEST_KILL_AT", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
    def close(self):
        pass

@hookimpl
def cpt_register_loggers():
    return [LoggerSpec(name="killer", create=lambda d, c: _Killer())]
'''
