"""Issue 11, item 1: loading a checkpoint or model folder never executes code and never
reads outside its folder (payload and traversal cases; the rest is in test_checkpoint_trust.py)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from cptcore.errors import ConfigError, CptError

from checkpoint_support import Payload, _copy_run, _pm, _rehash, _resume_cfg, _train, make_env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir):
    return make_env(tmp_path_factory.mktemp("trust"), smollm2_tokenizer_dir)


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


# ------------------------------------------------------------------ plugin files, symlinks, FIFOs

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
