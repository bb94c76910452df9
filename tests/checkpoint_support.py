"""Helpers shared by the checkpoint trust tests (test_checkpoint_loading.py,
test_checkpoint_trust.py): a harmless pickle payload, a small trained run to attack, and
ways to damage it."""

from __future__ import annotations

import shutil
from pathlib import Path


from cptcore.plugins import make_plugin_manager

from train_support import DATA, prepare, run_config, tiny_model


class Payload:
    """Unpickling this creates ``marker`` (it would run any code the same way)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _pm():
    return make_plugin_manager(entrypoints=False)


def _train(cfg):
    from cptcore.train.loop import train

    return train(cfg, _pm())


def make_env(root: Path, smollm2_tokenizer_dir: Path) -> dict:
    """A tiny model trained 4 steps with a checkpoint every 2, its data (10 rows) and a
    smaller data folder (5 rows)."""
    tok = smollm2_tokenizer_dir
    lines = (DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()
    ten, five = root / "ten.jsonl", root / "five.jsonl"
    ten.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")  # 10 rows of 64 tokens
    five.write_text(lines[0] + "\n", encoding="utf-8")  # 5 rows
    model = tiny_model(root / "model", tok)
    data = prepare(root / "data", tok, [str(ten)], max_length=64)
    small = prepare(root / "small", tok, [str(five)], max_length=64)
    run = root / "run"
    _train(run_config(run, model, [str(data)], checkpointing__save_every=2, checkpointing__keep_last=0))
    return {"root": root, "model": model, "data": data, "small": small, "run": run}


def _copy_run(env, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(env["run"], out, ignore=shutil.ignore_patterns("final", "summary.json"))
    return out


def _resume_cfg(env, out, resume="auto", data=None, **sets):
    return run_config(out, env["model"], [str(data or env["data"])], checkpointing__save_every=2,
                      checkpointing__keep_last=0, checkpointing__resume=str(resume), training__max_steps=6, **sets)


def _flip(path: Path, n: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    for i in range(mid, mid + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _rehash(ckpt: Path) -> None:
    """Recompute the checksums after planting a payload, so the loader itself is tested."""
    from cptcore.train.integrity import CHECKSUMS, write_checksums

    (ckpt / CHECKSUMS).unlink()
    write_checksums(ckpt)
