"""The launcher for real: ``cpt train --nproc-per-node 2`` killed with SIGKILL (launcher
only) or SIGTERM (its process group) leaves no rank behind, and two "nodes" on
localhost (two ``cpt train --nnodes 2 --node-rank i`` launchers, one process each,
gloo): a run, a rank error seen on both nodes, a node that never starts, a node that
fails before starting. Tiny random-init LLaMA with SmolLM2's tokenizer."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_support import DATA, prepare, tiny_model

REPO = Path(__file__).resolve().parents[1]
CPT = [sys.executable, "-m", "cptcore.cli.main"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir):
    root = tmp_path_factory.mktemp("launch_slow")
    small = root / "small.jsonl"
    small.write_text("\n".join((DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[:2]) + "\n",
                     encoding="utf-8")
    return {"model": tiny_model(root / "model", smollm2_tokenizer_dir),
            "train": prepare(root / "train", smollm2_tokenizer_dir, [str(small)], max_length=64)}


def _env(**extra):
    e = dict(os.environ, OMP_NUM_THREADS="1", CPT_DEBUG="0", PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        e.pop(k, None)
    e.update(extra)
    return e


def _train(env, out, *extra):
    return [*CPT, "train", "--model", str(env["model"]), "--data", str(env["train"]), "--out", str(out),
            "--micro-batch-size", "1", "--save-every", "0", "--set", "logging.progress=false",
            "--set", "logging.log_every=1", *extra]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("how", ["sigkill-launcher", "sigterm-group"])
def test_killed_launcher_leaves_no_rank(env, tmp_path, how):
    out = tmp_path / "out"
    launcher = subprocess.Popen(_train(env, out, "--max-steps", "100000", "--nproc-per-node", "2"), cwd=REPO,
                                env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    ranks: list[int] = []
    try:
        metrics = out / "logs" / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):  # both ranks are training
            assert launcher.poll() is None, launcher.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "training did not start within 300 s"
            time.sleep(0.5)
        ranks = _children(launcher.pid)
        assert len(ranks) == 2 and all(_alive(r) for r in ranks)
        if how == "sigkill-launcher":
            os.kill(launcher.pid, signal.SIGKILL)
        else:
            os.killpg(launcher.pid, signal.SIGTERM)
        launcher.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(_alive(r) for r in ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [r for r in ranks if _alive(r)] == [], "ranks outlived their launcher by 10 s"
        assert launcher.returncode == (-signal.SIGKILL if how == "sigkill-launcher" else 128 + signal.SIGTERM)
    finally:
        for r in ranks:
            if _alive(r):
                os.killpg(r, signal.SIGKILL)  # torchrun gives each rank its own session
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()


def _port() -> int:
    from cptcore.train.launch import _free_port

    return _free_port()


def _two_nodes(env, tmp_path, *extra, node1_extra=(), start_node1=True, timeout="60", plugin=None):
    """Start node 0 and (unless not ``start_node1``) node 1; returns both CompletedProcess-like
    tuples ``(returncode, stdout, stderr)`` (node 1: ``None`` when not started)."""
    port = _port()
    common = ["--nproc-per-node", "1", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
              "--rendezvous-timeout", timeout, *extra]
    pre = ["--plugin", str(plugin)] if plugin else []

    def start(rank, more):
        cmd = _train(env, tmp_path / "out", *common, "--node-rank", str(rank), *more)
        cmd = cmd[:3] + pre + cmd[3:]
        return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    procs = [start(0, ())]
    if start_node1:
        procs.append(start(1, node1_extra))
    results = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=400)  # a hang fails here
            results.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
    return results[0], (results[1] if start_node1 else None)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_two_nodes_train_and_only_the_exporting_rank_reports_it(env, tmp_path):
    (rc0, out0, err0), (rc1, out1, err1) = _two_nodes(env, tmp_path, "--max-steps", "2")
    assert rc0 == 0 and rc1 == 0, err0[-2000:] + err1[-2000:]
    final = tmp_path / "out" / "final"
    reports = [line for line in out0.splitlines() if "exported to" in line]
    assert len(reports) == 1 and re.fullmatch(rf"trained 2 steps; final loss \S+; exported to {re.escape(str(final))}",
                                              reports[0]), out0
    assert "exported to" not in out1
    assert (final / "config.json").is_file()


def test_rank_error_is_printed_on_every_node(env, tmp_path):
    """A CptError raised on every rank (plugin fingerprints differ): node 1's first rank
    (global rank 1) prints the one-line error too, not only global rank 0."""
    skew = tmp_path / "skew.py"
    skew.write_text("import os, cptcore\nif os.environ.get('RANK') == '1':\n    cptcore.__version__ = 'other'\n")
    (rc0, _, err0), (rc1, _, err1) = _two_nodes(env, tmp_path, "--max-steps", "1", plugin=skew)
    assert rc0 == 1 and rc1 == 1
    for err in (err0, err1):
        errors = _errors(err)
        assert len(errors) == 1, err[-3000:]
        assert errors[0].startswith("error: plugin fingerprint differs across ranks")
        assert "Traceback" not in err


def test_node_that_never_starts_is_named_within_the_timeout(env, tmp_path):
    t0 = time.monotonic()
    (rc0, _, err0), _ = _two_nodes(env, tmp_path, "--max-steps", "1", start_node1=False, timeout="5")
    took = time.monotonic() - t0
    assert rc0 == 1
    [line] = _errors(err0)
    assert re.fullmatch(r"error: rendezvous timed out after 5 s \(--rendezvous-timeout\): node\(s\) 1 of 2 never joined "
                        r"at 127\.0\.0\.1:(\d+) \(joined: 0\); start them with --nnodes 2 --master-addr 127\.0\.0\.1 "
                        r"--master-port \1", line), line
    assert "waiting for node(s) 1 of 2 to join" in err0
    assert took < 300  # not torchrun's 600 s static rendezvous (startup + precheck + 5 s)
    assert not (tmp_path / "out" / "final").exists()


def test_node_failing_before_start_is_reported_by_node_zero(env, tmp_path):
    (rc0, _, err0), (rc1, _, err1) = _two_nodes(env, tmp_path, "--max-steps", "1", node1_extra=("--lr", "-1"))
    assert rc0 == 1 and rc1 == 1
    [own] = _errors(err1)
    assert own.startswith("error: optimizer.lr")
    assert _errors(err0) == [f"error: node 1 failed before starting: {own[len('error: '):]}"]
