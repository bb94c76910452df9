"""kill -9 in a staged run (at the boundary, then inside stage 2) and ``--resume auto``
give final weights and logged losses bitwise equal to the uninterrupted run: ddp, 1
process, and zero2 on 2 CPU ranks (``--nproc-per-node 2``); real subprocesses, so ``slow``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train_support import DATA, prepare, tiny_model

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# kills its process when it logs step $CPT_TEST_KILL_AT of stage $CPT_TEST_KILL_STAGE
# (a logger is created per stage, in OUT/stages/NAME/logs)
KILLER = '''
import os, signal
from pathlib import Path
from cptcore.hookspecs import hookimpl
from cptcore.specs import LoggerSpec

class _Killer:
    def __init__(self, logs):
        self.stage = Path(logs).parent.name
    def log(self, metrics, step):
        if self.stage == os.environ.get("CPT_TEST_KILL_STAGE") and step == int(os.environ.get("CPT_TEST_KILL_AT", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
    def close(self):
        pass

@hookimpl
def cpt_register_loggers():
    return [LoggerSpec(name="stagekiller", create=lambda d, c: _Killer(d))]
'''


def _recipe(model, train, out):
    return {
        "model": {"path": str(model)}, "data": {"train": [str(train)]},
        "training": {"out_dir": str(out), "micro_batch_size": 2}, "optimizer": {"lr": 1e-3},
        "checkpointing": {"save_every": 2, "keep_last": 0}, "logging": {"progress": False, "loggers": ["jsonl"]},
        "stages": [
            {"name": "a", "trainable": "embeddings", "budget": {"steps": 2}, "optimizer": {"lr": 1e-2}},
            {"name": "b", "budget": {"steps": 5}, "schedule": {"warmup_steps": 1}},
        ],
    }


def _cpt(args, **env):
    e = dict(os.environ, OMP_NUM_THREADS="1", **env)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return subprocess.run([sys.executable, "-m", "cptcore.cli.main", *args], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=600)


def _losses(out):
    rows = []
    for stage in ("a", "b"):
        rows += [(stage, r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in map(
            json.loads, (out / "stages" / stage / "logs" / "metrics.jsonl").read_text().splitlines())]
    return rows


def test_kill_at_boundary_and_in_stage_two_resumes_bit_identically(tmp_path, smollm2_tokenizer_dir):
    from safetensors.torch import load_file

    from cptcore.config import load_config
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.loop import train

    small = tmp_path / "small.jsonl"
    small.write_text("\n".join((DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[:2]) + "\n",
                     encoding="utf-8")
    model = tiny_model(tmp_path / "model", smollm2_tokenizer_dir)
    data = prepare(tmp_path / "train", smollm2_tokenizer_dir, [str(small)], max_length=64)
    ref_cfg = tmp_path / "ref.yaml"
    ref_cfg.write_text(yaml.safe_dump(_recipe(model, data, tmp_path / "ref")))
    train(load_config(ref_cfg), make_plugin_manager(entrypoints=False))  # uninterrupted, in this process

    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    cut = tmp_path / "cut"
    recipe = _recipe(model, data, cut)
    recipe["logging"]["loggers"] = ["jsonl", "stagekiller"]
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(recipe))
    args = ["--plugin", str(killer), "train", "--config", str(tmp_path / "cut.yaml")]
    first = _cpt(args, CPT_TEST_KILL_STAGE="b", CPT_TEST_KILL_AT="1")  # stage a done, b without a checkpoint
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert (cut / "stages" / "a" / "summary.json").is_file() and not (cut / "stages" / "b" / "checkpoints").exists()
    second = _cpt([*args, "--resume", "auto"], CPT_TEST_KILL_STAGE="b", CPT_TEST_KILL_AT="3")  # inside stage b
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert sorted(p.name for p in (cut / "stages" / "b" / "checkpoints").iterdir()) == ["step-2"]
    third = _cpt([*args, "--resume", "auto"])
    assert third.returncode == 0, third.stderr[-3000:]
    assert "resumed from" in third.stderr and "stages/b/checkpoints/step-2" in third.stderr
    assert _losses(cut) == _losses(tmp_path / "ref")
    a, b = load_file(tmp_path / "ref" / "final" / "model.safetensors"), load_file(cut / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((cut / "summary.json").read_text())
    assert [(s["name"], s["steps"]) for s in summary["stages"]] == [("a", 2), ("b", 5)]


def _cpt_run(args, timeout=300):
    """``_cpt`` with its own process group, killed whole on a timeout (no rank left behind)."""
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        e.pop(k, None)
    proc = subprocess.Popen([sys.executable, "-m", "cptcore.cli.main", *args], cwd=REPO, env=e, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_zero2_two_ranks_killed_in_stage_two_resumes_bit_identically(tmp_path, smollm2_tokenizer_dir):
    """The same recipe (stage b cut to 3 steps) under ``--nproc-per-node 2 --strategy zero2``
    (bf16, sharded optimizer state): rank 0 SIGKILLs itself at stage b step 3 (after b's
    step-2 checkpoint), the launcher takes rank 1 down; ``--resume auto`` then equals the
    uninterrupted 2-rank run bit for bit (weights, losses, lr, grad norms)."""
    from safetensors.torch import load_file

    small = tmp_path / "small.jsonl"
    small.write_text("\n".join((DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[:2]) + "\n",
                     encoding="utf-8")
    model = tiny_model(tmp_path / "model", smollm2_tokenizer_dir)
    data = prepare(tmp_path / "train", smollm2_tokenizer_dir, [str(small)], max_length=64)
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    two = ["--nproc-per-node", "2", "--strategy", "zero2", "--set", "strategy.precision=bf16"]

    def launch(name, *extra, **env):
        recipe = _recipe(model, data, tmp_path / name)
        recipe["stages"][1]["budget"]["steps"] = 3
        recipe["logging"]["loggers"] = ["jsonl", "stagekiller"]
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        os.environ.update(env)
        try:
            return _cpt_run(["--plugin", str(killer), "train", "--config", str(tmp_path / f"{name}.yaml"), *two, *extra])
        finally:
            for k in env:
                os.environ.pop(k)

    ref = launch("ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    cut = tmp_path / "cut"
    first = launch("cut", CPT_TEST_KILL_STAGE="b", CPT_TEST_KILL_AT="3")
    assert first.returncode != 0, first.stderr[-2000:]
    assert not (cut / "final").exists()
    assert sorted(p.name for p in (cut / "stages" / "b" / "checkpoints").iterdir()) == ["step-2"]
    second = launch("cut", "--resume", "auto")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "stages/b/checkpoints/step-2" in second.stderr
    assert _losses(cut) == _losses(tmp_path / "ref")
    a, b = load_file(tmp_path / "ref" / "final" / "model.safetensors"), load_file(cut / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((cut / "summary.json").read_text())
    assert [(s["name"], s["steps"]) for s in summary["stages"]] == [("a", 2), ("b", 3)]
