"""Checkpoints you can trust (issue 11): loading never executes code from a checkpoint
or model folder, paths from indexes stay inside their folder, per-file checksums catch
damage, the run folder is locked, resume refuses another layout or other data before
the model loads, and write failures are one line."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cptcore.errors import ConfigError, CptError
from cptcore.plugins import make_plugin_manager

from train_support import DATA, prepare, run_config, tiny_model

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir):
    root = tmp_path_factory.mktemp("trust")
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


# ------------------------------------------------------------------ 1. no code execution

def test_payload_is_live_when_unpickled(tmp_path):
    """The control: the payload does run under plain pickle, so its absence below means
    the loaders refused it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("rel", ["lr_scheduler.pt", "model/pytorch_model-00001.bin",
                                 "optimizer/pytorch_optim-00001.bin", "optimizer/pytorch_optim_group.bin"])
def test_resume_never_runs_a_pickle_payload(env, tmp_path, rel):
    out = _copy_run(env, tmp_path)
    ckpt = out / "checkpoints" / "step-4"
    marker = tmp_path / "ran"
    torch.save({"state": Payload(marker)}, ckpt / rel)
    _rehash(ckpt)
    with pytest.raises(CptError, match="corrupt checkpoint, cannot read it .UnpicklingError"):
        _train(_resume_cfg(env, out, ckpt))
    assert not marker.exists()


def test_rng_state_is_json_and_a_pickled_one_is_refused(env, tmp_path):
    out = _copy_run(env, tmp_path)
    ckpt = out / "checkpoints" / "step-4"
    state = json.loads((ckpt / "rng" / "rank-0.json").read_text())
    assert set(state) >= {"python", "numpy", "torch"} and len(state["numpy"]["key"]) == 624
    marker = tmp_path / "ran"
    (ckpt / "rng" / "rank-0.json").unlink()
    torch.save(Payload(marker), ckpt / "rng" / "rank-0.pt")  # the old pickled format
    _rehash(ckpt)
    with pytest.raises(CptError, match="rank-0.pt is a pickled RNG file"):
        _train(_resume_cfg(env, out, ckpt))
    assert not marker.exists()


@pytest.mark.parametrize("relative", [True, False])
def test_resume_never_imports_a_plugin_file_named_by_the_checkpoint(env, tmp_path, monkeypatch, relative):
    """A shared checkpoint's config.yaml can record plugins.files (path and sha256) next
    to a Python file shipped with it: resume checks such files, never imports them."""
    import yaml

    from cptcore.errors import PluginError
    from cptcore.plugin_files import with_plugin_files
    from cptcore.plugins import file_sha256

    out = _copy_run(env, tmp_path)
    ckpt = out / "checkpoints" / "step-4"
    marker = tmp_path / "ran"
    evil = ckpt / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    named = str(evil.relative_to(tmp_path)) if relative else str(evil)
    doc = yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8"))
    doc["plugins"] = {"files": [{"path": named, "sha256": file_sha256(evil)}]}
    (ckpt / "config.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    _rehash(ckpt)
    with pytest.raises(PluginError, match=f"config.yaml: this run used plugin file {named}.*--plugin"):
        with_plugin_files(_resume_cfg(env, out, ckpt), _pm())
    assert not marker.exists()


def test_export_never_runs_a_model_shard_payload(env, tmp_path):
    from cptcore.train.export_cli import export_checkpoint

    ckpt = _copy_run(env, tmp_path) / "checkpoints" / "step-4"
    marker = tmp_path / "ran"
    torch.save({"w": Payload(marker)}, ckpt / "model" / "pytorch_model-00001.bin")
    _rehash(ckpt)
    with pytest.raises(CptError, match="cannot read it .UnpicklingError"):
        export_checkpoint(_pm(), ckpt, tmp_path / "exported")
    assert not marker.exists()


def test_model_folder_payload_never_runs(env, tmp_path):
    from cptcore.config import ModelConfig
    from cptcore.model.load import load_model

    folder = tmp_path / "model"
    shutil.copytree(env["model"], folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    marker = tmp_path / "ran"
    torch.save({"model.embed_tokens.weight": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CptError, match="cannot load the model weights .Unable to load weights"):
        load_model(ModelConfig(path=str(folder)), log=lambda m: None)
    assert not marker.exists()


def test_export_ignores_remote_code_and_relative_paths_from_the_checkpoint(env, tmp_path):
    """A shared checkpoint's config.yaml cannot switch on remote code or pick a model
    folder relative to where it was unpacked; only the command line can."""
    import yaml

    from cptcore.train.export_cli import checkpoint_config, export_checkpoint

    ckpt = _copy_run(env, tmp_path) / "checkpoints" / "step-4"
    evil = tmp_path / "evil_model"  # the base model plus code that would run if trusted
    shutil.copytree(env["model"], evil)
    marker = tmp_path / "ran"
    (evil / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    cfg = json.loads((evil / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.EvilForCausalLM"}
    (evil / "config.json").write_text(json.dumps(cfg))
    saved = yaml.safe_load((ckpt / "config.yaml").read_text())
    saved["model"].update(path=str(evil), trust_remote_code=True)
    (ckpt / "config.yaml").write_text(yaml.safe_dump(saved))
    _rehash(ckpt)
    assert checkpoint_config(ckpt).model.trust_remote_code is False
    assert checkpoint_config(ckpt, trust_remote_code=True).model.trust_remote_code is True  # --trust-remote-code
    export_checkpoint(_pm(), ckpt, tmp_path / "exported")
    assert (tmp_path / "exported" / "config.json").is_file() and not marker.exists()

    for value in ("evil_model", str(ckpt / "model")):  # relative, or inside the checkpoint
        saved["model"]["path"] = value
        (ckpt / "config.yaml").write_text(yaml.safe_dump(saved))
        with pytest.raises(ConfigError, match="give the base model with --model PATH"):
            checkpoint_config(ckpt)
    assert checkpoint_config(ckpt, model=str(env["model"])).model.path == str(env["model"])


# ------------------------------------------------------------------ traversal

def test_index_shard_names_must_stay_inside(env, tmp_path):
    from cptcore.train.checkpoint import validate_checkpoint
    from cptcore.train.export import load_checkpoint_weights

    ckpt = _copy_run(env, tmp_path) / "checkpoints" / "step-4"
    outside = tmp_path / "x.bin"
    shutil.copy(ckpt / "model" / "pytorch_model-00001.bin", outside)
    index = ckpt / "model" / "pytorch_model.bin.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {k: "../../../x.bin" for k in data["weight_map"]}
    index.write_text(json.dumps(data))
    _rehash(ckpt)
    with pytest.raises(CptError, match=r"shard name in pytorch_model.bin.index.json '../../../x.bin' points outside"):
        validate_checkpoint(ckpt)
    with pytest.raises(CptError, match="points outside the folder"):
        load_checkpoint_weights(None, ckpt)  # export's own reader, validation skipped


def test_colossalai_index_reader_refuses_traversal(tmp_path):
    from cptcore.compat import safe_load

    safe_load.apply()
    from colossalai.checkpoint_io.index_file import CheckpointIndexFile

    (tmp_path / "m").mkdir()
    bad = tmp_path / "m" / "model.index.json"
    bad.write_text(json.dumps({"weight_map": {"w": "../x.bin"}}))
    with pytest.raises(CptError, match="points outside"):
        CheckpointIndexFile.from_file(str(bad))
    bad.write_text(json.dumps({"weight_map": {"w": "a.bin"}, "metadata": {"param_groups": "/etc/passwd"}}))
    with pytest.raises(CptError, match="param_groups file .* points outside"):
        CheckpointIndexFile.from_file(str(bad))
    bad.write_text(json.dumps({"weight_map": {"w": "sub/a.bin"}}))
    assert CheckpointIndexFile.from_file(str(bad)).weight_map == {"w": "sub/a.bin"}


def test_colossalai_torch_load_sites_are_weights_only(tmp_path):
    from cptcore.compat import safe_load

    safe_load.apply()
    import colossalai.checkpoint_io.checkpoint_io_base as base
    import colossalai.checkpoint_io.utils as utils

    marker = tmp_path / "ran"
    torch.save([Payload(marker)], tmp_path / "groups.bin")
    with pytest.raises(pickle.UnpicklingError):
        utils.load_param_groups_into_optimizer(None, str(tmp_path / "groups.bin"))
    with pytest.raises(pickle.UnpicklingError):
        utils.load_shard_state_dict(tmp_path / "groups.bin")
    with pytest.raises(pickle.UnpicklingError):
        base.CheckpointIO.load_lr_scheduler(None, None, str(tmp_path / "groups.bin"))
    assert not marker.exists()
    assert all(not p.has_gap() for p in safe_load.PATCHES)


def test_model_folder_index_traversal_is_refused(env, tmp_path):
    from cptcore.model.load import check_model_files

    folder = tmp_path / "model"
    shutil.copytree(env["model"], folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../../x.safetensors"}}))
    with pytest.raises(CptError, match="points outside the folder"):
        check_model_files(folder)


def test_checksum_entries_must_stay_inside(tmp_path):
    from cptcore.train.integrity import CHECKSUMS, read_checksums

    (tmp_path / CHECKSUMS).write_text("0" * 64 + "  ../secret\n")
    with pytest.raises(CptError, match=r"checksums.sha256:1: .* points outside"):
        read_checksums(tmp_path)


# ------------------------------------------------------------------ 2. checksums

@pytest.mark.parametrize("rel", ["model", "optimizer", "rng", "lr_scheduler.pt", "trainer_state.json",
                                 "checksums.sha256", "model/pytorch_model.bin.index.json"])
def test_symlink_out_of_the_checkpoint_is_refused(env, tmp_path, rel):
    """A symlinked folder (``model -> /elsewhere``) is not walked by the checksum listing,
    so before this check a checkpoint with its ``model/`` outside verified and loaded
    shards from there; a symlinked file was read before the checksums were checked."""
    from cptcore.train.checkpoint import validate_checkpoint
    from cptcore.train.integrity import DamagedCheckpoint

    ckpt = _copy_run(env, tmp_path) / "checkpoints" / "step-4"
    outside = tmp_path / "outside"
    outside.mkdir()
    (ckpt / rel).rename(outside / "moved")
    (ckpt / rel).symlink_to(outside / "moved", target_is_directory=(outside / "moved").is_dir())
    if rel != "checksums.sha256":
        _rehash(ckpt)  # the attacker lists what the listing sees
    with pytest.raises(DamagedCheckpoint, match=f"symlink '{rel}' points outside the folder"):
        validate_checkpoint(ckpt)


def test_symlink_inside_the_checkpoint_is_fine(env, tmp_path):
    from cptcore.train.checkpoint import validate_checkpoint

    ckpt = _copy_run(env, tmp_path) / "checkpoints" / "step-4"
    (ckpt / "lr_scheduler.pt").rename(ckpt / "lr.pt")
    (ckpt / "lr_scheduler.pt").symlink_to("lr.pt")
    _rehash(ckpt)
    assert validate_checkpoint(ckpt)["step"] == 4


def test_fifo_in_the_checkpoint_is_refused_not_read(env, tmp_path):
    """A FIFO listed in checksums.sha256 blocked the hashing reader forever."""
    from cptcore.train.checkpoint import validate_checkpoint
    from cptcore.train.integrity import CHECKSUMS, DamagedCheckpoint

    ckpt = _copy_run(env, tmp_path) / "checkpoints" / "step-4"
    (ckpt / "lr_scheduler.pt").unlink()
    os.mkfifo(ckpt / "lr_scheduler.pt")
    table = (ckpt / CHECKSUMS).read_text()  # still lists lr_scheduler.pt
    assert "  lr_scheduler.pt\n" in table
    with pytest.raises(DamagedCheckpoint, match="lr_scheduler.pt: not a regular file"):
        validate_checkpoint(ckpt)


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
    from cptcore.train.checkpoint import validate_checkpoint
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
