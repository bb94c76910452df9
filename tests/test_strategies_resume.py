"""Kill-and-resume through ``cpt train`` with a sharded strategy: ``hybrid3d`` with
``pp_size=2`` (pipeline, fp32 master weights, dp-group reductions), 2 CPU ranks,
gradient accumulation, SIGKILL after step 3, ``--resume auto``: the same losses, LRs and
grad norms as an uninterrupted run, and bit-identical exported weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train_support import DATA, KILLER_PLUGIN, prepare, tiny_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CPT = [sys.executable, "-m", "cptcore.cli.main"]



def _cpt(args, **env):
    e = dict(os.environ, OMP_NUM_THREADS="1", CPT_DEBUG="1", **env)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    proc = subprocess.Popen([*CPT, *args], cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # own group: a timeout kills every rank
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _metrics(out):
    return [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def test_hybrid3d_pipeline_sigkill_resume_is_bit_identical(tmp_path, smollm2_tokenizer_dir):
    from safetensors.torch import load_file

    model = tiny_model(tmp_path / "model", smollm2_tokenizer_dir)
    data = prepare(tmp_path / "data", smollm2_tokenizer_dir, [str(DATA / "zh_poetry_sample.jsonl")], max_length=64)
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER_PLUGIN)

    def args(out):
        return ["--plugin", str(killer), "train", "--model", str(model), "--data", str(data), "--out", str(out),
                "--strategy", "3d", "--set", "strategy.pp_size=2", "--set", "strategy.precision=bf16",
                "--max-steps", "5", "--micro-batch-size", "2", "--accumulation-steps", "2", "--lr", "1e-3",
                "--save-every", "3", "--nproc-per-node", "2", "--set", "logging.progress=false",
                "--set", "logging.loggers=[jsonl,killer]", "--set", "schedule.warmup_steps=1"]

    ref = _cpt(args(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _cpt(args(tmp_path / "cut"), CPT_TEST_KILL_AT="4")
    assert killed.returncode != 0
    assert (tmp_path / "cut" / "checkpoints" / "step-3" / "master" / "rank1.pt").is_file()
    resumed = _cpt([*args(tmp_path / "cut"), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _metrics(tmp_path / "ref"), _metrics(tmp_path / "cut")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert [(r["loss"], r["lr"], r["grad_norm"]) for r in a] == [(r["loss"], r["lr"], r["grad_norm"]) for r in b]
    wa = load_file(tmp_path / "ref" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # a sharded (pipeline-parallel) checkpoint exports in one process, equal to OUT/final
    exported = _cpt(["export", str(tmp_path / "ref" / "checkpoints" / "step-5"), "--out", str(tmp_path / "exported")])
    assert exported.returncode == 0, exported.stderr[-3000:]
    we = load_file(next((tmp_path / "exported").glob("*.safetensors")))
    assert we.keys() == wa.keys() and all(torch.equal(we[k].to(wa[k].dtype), wa[k]) for k in wa)
