"""Checkpoints you can trust (issue 11): per-file checksums catch damage, the run folder
is locked, resume refuses another layout or other data before the model loads, and write
failures are one line. Loading without executing code and paths that stay inside their
folder are tested in test_checkpoint_loading.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cptcore.errors import ConfigError, CptError

from checkpoint_support import _copy_run, _flip, _pm, _rehash, _resume_cfg, _train, make_env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir):
    return make_env(tmp_path_factory.mktemp("trust"), smollm2_tokenizer_dir)


# ------------------------------------------------------------------ 2. checksums

def test_checksum_file_is_sha256sum_format(env):
    ckpt = env["run"] / "checkpoints" / "step-4"
    lines = (ckpt / "checksums.sha256").read_text().splitlines()
    names = [l.split("  ", 1)[1] for l in lines]
    assert names == sorted(names) and "trainer_state.json" in names and "model/pytorch_model-00001.bin" in names
    if shutil.which("sha256sum"):
        done = subprocess.run(["sha256sum", "-c", "--quiet", "checksums.sha256"], cwd=ckpt)
        assert done.returncode == 0


@pytest.mark.parametrize("rel", ["model/pytorch_model-00001.bin", "optimizer/pytorch_optim-00001.bin"])
def test_flipped_bytes_refused_on_resume_naming_the_file(env, tmp_path, rel):
    out = _copy_run(env, tmp_path)
    ckpt = out / "checkpoints" / "step-4"
    _flip(ckpt / rel)
    with pytest.raises(CptError, match=f"{ckpt / rel}: checksum mismatch, the file is damaged"):
        _train(_resume_cfg(env, out, ckpt))


def test_flipped_bytes_refused_on_export(env, tmp_path):
    from cptcore.train.export_cli import export_checkpoint

    ckpt = _copy_run(env, tmp_path) / "checkpoints" / "step-4"
    _flip(ckpt / "model" / "pytorch_model-00001.bin")
    with pytest.raises(CptError, match="pytorch_model-00001.bin: checksum mismatch"):
        export_checkpoint(_pm(), ckpt, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def test_resume_auto_falls_back_to_newest_intact(env, tmp_path, capfd):
    out = _copy_run(env, tmp_path)
    _flip(out / "checkpoints" / "step-4" / "optimizer" / "pytorch_optim-00001.bin")
    summary = _train(_resume_cfg(env, out))
    err = capfd.readouterr().err
    assert "skipping damaged checkpoint step-4" in err and "falling back to step-2, the newest intact checkpoint" in err
    assert summary["resumed_from"].endswith("step-2") and summary["steps"] == 6


def test_resume_auto_with_no_intact_checkpoint_is_refused(env, tmp_path):
    from cptcore.train.checkpoint import resolve_resume

    out = _copy_run(env, tmp_path)
    for step in (2, 4):
        _flip(out / "checkpoints" / f"step-{step}" / "model" / "pytorch_model-00001.bin")
    with pytest.raises(CptError, match="no intact checkpoint .* \\(newest step-4: .*checksum mismatch"):
        resolve_resume("auto", out, log=lambda m: None)


def test_added_file_is_refused(env, tmp_path):
    from cptcore.train.integrity import verify_checksums

    ckpt = _copy_run(env, tmp_path) / "checkpoints" / "step-4"
    (ckpt / "model" / "extra.bin").write_bytes(b"x")
    with pytest.raises(CptError, match="extra.bin: not listed in checksums.sha256"):
        verify_checksums(ckpt)


def test_checksums_and_fsync_before_the_rename(tmp_path, monkeypatch):
    """The completing rename happens only after every file is hashed and fsync'ed and
    ``checksums.sha256`` exists."""
    from cptcore.config import RunConfig
    from cptcore.train import checkpoint, integrity

    synced, seen = [], {}
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(integrity.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])

    def rename(src, dst):
        seen["checksums"] = (Path(src) / "checksums.sha256").is_file()
        seen["fsyncs"] = len(synced)
        return real_rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", rename)
    path = checkpoint.save_checkpoint(tmp_path, 2, _FakeStrategy(), None, None, None, _STATE, _fake_config(tmp_path),
                                      keep_last=2)
    files = integrity.read_checksums(path)
    assert seen["checksums"] and seen["fsyncs"] >= len(files) + 1  # every file, the list, then folders
    integrity.verify_checksums(path)


# ------------------------------------------------------------------ 4. run lock

_STATE = {"step": 0, "micro_batches": 0, "tokens_seen": 0, "sampler": {"epoch": 0, "position": 0}}


class _FakeStrategy:
    name = "ddp"
    dp_size = 1

    def save(self, d, model, opt, sched):
        for sub in ("model", "optimizer"):
            (d / sub).mkdir()
        (d / "lr_scheduler.pt").write_text("x")


def _fake_config(tmp_path):
    from cptcore.config import load_config

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "manifest.json").write_text('{"packs": 3}')
    return load_config(None, overrides={"data.train": [str(data)]})


def test_second_train_into_locked_out_is_one_line(env, tmp_path, cpt_cli):
    from cptcore.train import runlock

    out = tmp_path / "out"
    with runlock.acquire(out):
        code, output = cpt_cli("train", "--model", str(env["model"]), "--data", str(env["data"]), "--out", str(out),
                               "--max-steps", "1", "--set", "logging.progress=false")
    lines = [l for l in output.splitlines() if l.startswith("error: ")]
    assert code == 1 and len(lines) == 1, output
    assert f"{out} is in use by another cpt train (pid {os.getpid()} on " in lines[0]
    assert not (out / "logs").exists()


def test_lock_of_a_killed_process_is_stale(tmp_path, capfd):
    from cptcore.train import runlock

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from cptcore.train import runlock\n"
        "with runlock.acquire(%r):\n    print('held', flush=True); time.sleep(60)\n") % (str(REPO), str(out))],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(runlock.RunFolderLocked, match=f"pid {holder.pid} on "):
        runlock.probe(out)
    holder.kill()
    holder.wait()
    with runlock.acquire(out):  # the kernel dropped the dead holder's lock
        assert runlock.held(out)
    assert f"taking over the stale lock of pid {holder.pid}" in capfd.readouterr().err
    assert not runlock.held(out) and not (out / runlock.HOLDER).exists()


def test_tmp_cleanup_only_while_holding_the_lock(tmp_path):
    """Another run's ``.tmp`` (a save in progress) survives a save made without the lock;
    with the lock (``cpt train``: nobody else can write here) a killed save's is removed."""
    from cptcore.train import runlock
    from cptcore.train.checkpoint import list_checkpoints, save_checkpoint

    other = tmp_path / "checkpoints" / "step-1.tmp"
    (other / "model").mkdir(parents=True)
    cfg = _fake_config(tmp_path)
    save_checkpoint(tmp_path, 2, _FakeStrategy(), None, None, None, _STATE, cfg, keep_last=2)
    assert other.is_dir()
    with runlock.acquire(tmp_path):
        path = save_checkpoint(tmp_path, 3, _FakeStrategy(), None, None, None, _STATE, cfg, keep_last=2)
    assert not other.exists() and list_checkpoints(tmp_path)[-1] == path


# ------------------------------------------------------------------ 5. layout and data

def _precheck(cfg, world=None):
    from cptcore.train.loop import precheck

    return precheck(cfg, _pm(), world)


def test_other_data_refused_before_the_model_loads(env, tmp_path, monkeypatch):
    out = _copy_run(env, tmp_path)
    import cptcore.train.build as build

    monkeypatch.setattr(build, "build_model", lambda *a: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match=r"the training data differs from the checkpoint's \(source 1 \(.*small\): "
                                          r"rows 10 -> 5, manifest sha256 .*checkpointing.new_data=true"):
        _train(_resume_cfg(env, out, data=env["small"]))
    with pytest.raises(ConfigError, match="micro_batch_size 2 -> 1"):
        _precheck(_resume_cfg(env, out, training__micro_batch_size=1))


def test_other_layout_refused_before_the_model_loads(env, tmp_path):
    out = _copy_run(env, tmp_path)
    with pytest.raises(ConfigError, match=r"the layout differs \(world_size 1 -> 2; dp 1 -> 2\)"):
        _precheck(_resume_cfg(env, out), world=2)
    with pytest.raises(ConfigError, match=r"the layout differs \(strategy ddp -> zero2\)"):
        _precheck(_resume_cfg(env, out, strategy__name="zero2"))


def test_new_data_on_purpose_continues_from_its_start(env, tmp_path):
    """``checkpointing.new_data=true`` with a smaller data set: no traceback; step and
    schedule continue, the new data is read from its first micro-batch."""
    out = _copy_run(env, tmp_path)
    summary = _train(_resume_cfg(env, out, data=env["small"], checkpointing__new_data=True))
    assert summary["steps"] == 6 and summary["resumed_from"].endswith("step-4")
    state = json.loads((out / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    assert state["sampler"]["epoch"] == 1 and state["sampler"]["position"] == 0  # 2 batches/epoch, 2 steps done
    assert state["data"]["sources"][0]["rows"] == 5


@pytest.mark.parametrize("mode", ["tokens", "bucketed"])
def test_new_data_may_change_the_mixing_mode(env, tmp_path, mode):
    """The mode-change refusal names checkpointing.new_data as the way out, so new_data
    resumes a rows-mode checkpoint in tokens/bucketed mode (it used to be refused)."""
    out = _copy_run(env, tmp_path)
    summary = _train(_resume_cfg(env, out, data=env["small"], checkpointing__new_data=True, data__mixing=mode))
    assert summary["steps"] == 6 and summary["data_mixing"]["mode"] == mode
    state = json.loads((out / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    assert state["sampler"]["mixing"] == mode and "new_data" not in state["sampler"]
    assert sum(s["rows"] for s in state["sampler"]["sources"]) == 2 * 2  # 2 steps x 2 rows from the new start


# ------------------------------------------------------------------ 6. one line, not a traceback

def test_trainer_state_without_sampler_is_one_line(env, tmp_path):
    out = _copy_run(env, tmp_path)
    ckpt = out / "checkpoints" / "step-4"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    del state["sampler"]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    _rehash(ckpt)
    with pytest.raises(CptError, match=r"trainer_state.json: corrupt trainer state \(no 'sampler' entry\)"):
        _precheck(_resume_cfg(env, out, ckpt))


def _one_line(output: str) -> str:
    lines = [l for l in output.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.mark.parametrize("launch", [[], ["--nproc-per-node", "2"]])
def test_unwritable_out_at_start_is_one_line(env, tmp_path, cpt_cli, launch):
    """1 rank, and 2 ranks (the launcher refuses before it starts any process)."""
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    code, output = cpt_cli("train", "--model", str(env["model"]), "--data", str(env["data"]),
                           "--out", str(blocker / "out"), "--max-steps", "1", "--set", "logging.progress=false", *launch)
    assert code == 1 and f"cannot write to {blocker / 'out'}: Not a directory" in _one_line(output)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_at_start_is_one_line(env, tmp_path, cpt_cli):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, output = cpt_cli("train", "--model", str(env["model"]), "--data", str(env["data"]),
                               "--out", str(out), "--max-steps", "1", "--set", "logging.progress=false")
    finally:
        out.chmod(0o755)
    assert code == 1 and "Permission denied" in _one_line(output)


# A logger plugin that makes OUT/checkpoints unwritable after step 1 logs: replaced by a
# file (works as root too), and read-only for everyone else.
BLOCKER_PLUGIN = '''
import os, shutil, stat
from pathlib import Path
from cptcore.hookspecs import hookimpl
from cptcore.specs import LoggerSpec

class _Blocker:
    def __init__(self, d):
        self.out = Path(d).parent
    def log(self, metrics, step):
        if step == 1 and os.environ.get("RANK", "0") == "0":
            ck = self.out / "checkpoints"
            shutil.rmtree(ck, ignore_errors=True)
            ck.write_text("not a folder")
    def close(self):
        pass

@hookimpl
def cpt_register_loggers():
    return [LoggerSpec(name="blocker", create=lambda d, c: _Blocker(d))]
'''


def _cpt(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CPT_DEBUG"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "cptcore.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_unwritable_out_mid_run_is_one_line(env, tmp_path, nproc):
    plugin = tmp_path / "blocker.py"
    plugin.write_text(BLOCKER_PLUGIN)
    out = tmp_path / "out"
    launch = ["--nproc-per-node", "2"] if nproc == 2 else []
    done = _cpt("--plugin", str(plugin), "train", "--model", str(env["model"]), "--data", str(env["data"]),
                "--out", str(out), "--max-steps", "2", "--save-every", "2", "--micro-batch-size", "2",
                "--set", "logging.progress=false", "--set", "logging.loggers=[jsonl,blocker]", *launch)
    assert done.returncode != 0
    errors = [l for l in done.stderr.splitlines() if l.startswith("error: ")]
    assert errors and all("cannot write to " in l and "checkpoints" in l for l in errors), done.stderr[-3000:]
    # no rank prints a traceback (rank 1 used to die in the barrier rank 0 had left); the
    # torchrun agent's own ChildFailedError report is the launcher's (cptcore/train/launch.py)
    ranks = [l for l in done.stderr.splitlines() if not l.startswith(("[rank", "error: ")) or "Traceback" in l]
    assert not any(l.startswith("[rank") for l in ranks), done.stderr[-3000:]
    if nproc == 1:
        assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_verification_is_skipped_only_for_an_unchanged_folder(env, tmp_path, monkeypatch):
    """A folder verified by this process (or the launcher that started it) is not hashed
    again; any change of a file's size or mtime makes it verify again."""
    from cptcore.train import checkpoint

    ckpt = _copy_run(env, tmp_path) / "checkpoints" / "step-4"
    checkpoint.validate_checkpoint(ckpt)
    calls = []
    monkeypatch.setattr(checkpoint, "verify_checksums", lambda p: calls.append(p))
    checkpoint.validate_checkpoint(ckpt)
    assert calls == []
    shard = ckpt / "model" / "pytorch_model-00001.bin"
    _flip(shard)
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 1_000_000))
    checkpoint.validate_checkpoint(ckpt)
    assert calls == [ckpt]


@pytest.mark.parametrize("entry", [
    {"world_size": "1"}, {"world_size": [1]}, {"world_size": None}, {"world_size": 1.5}, {"world_size": -1},
    {"world_size": 10**12}, {"step": -3}, {"sampler": {"epoch": True, "position": 0}}, {"layout": "x"},
    {"layout": {"world_size": [1], "strategy": ["ddp"]}}, {"data": "x"}, {"data": {"sources": "x", "shuffle": True}},
    {"data": {"sources": [1], "shuffle": True}},
])
def test_trainer_state_with_odd_types_is_one_line(env, tmp_path, entry):
    """trainer_state.json is read from a file someone may have written by hand: odd types
    (re-hashed, so the checksums pass) are a one-line error naming it, never a traceback,
    and a huge world_size does not build a list of 10**12 RNG file names."""
    from cptcore.train.resume_check import check_resume

    out = _copy_run(env, tmp_path)
    ckpt = out / "checkpoints" / "step-4"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps(dict(state, **entry)))
    _rehash(ckpt)
    with pytest.raises(CptError) as info:
        check_resume(ckpt, _resume_cfg(env, out, ckpt), _pm(), 1, state=None)
    message = str(info.value)
    assert "\n" not in message and (f"{ckpt}/trainer_state.json: corrupt trainer state" in message
                                     or f"{ckpt}: incomplete checkpoint, missing rng/rank-1.json" in message), message
