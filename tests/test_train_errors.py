"""Bad input to ``cpt train``: one-line errors naming the thing, before heavy work."""

from __future__ import annotations

import json
import shutil

import pytest

from train_support import DATA, prepare, tiny_model


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir, mistral_tokenizer_dir):
    root = tmp_path_factory.mktemp("train_err")
    small = root / "small.jsonl"
    small.write_text((DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    data = prepare(root / "data", smollm2_tokenizer_dir, [str(small)], max_length=64)  # 5 rows
    other = prepare(root / "mistral", mistral_tokenizer_dir, [str(small)], max_length=64)
    empty = root / "empty"
    import datasets

    datasets.Dataset.from_dict({"input_ids": [], "labels": [], "position_ids": [], "label_bytes": []},
                               features=datasets.load_from_disk(str(data)).features).save_to_disk(str(empty))
    shutil.copy(data / "manifest.json", empty / "manifest.json")
    return {"root": root, "model": tiny_model(root / "model", smollm2_tokenizer_dir), "data": data,
            "other": other, "empty": empty}


def _run(cpt_cli, env, tmp_path, *extra, data=None):
    args = ["train", "--model", str(env["model"]), "--data", str(data or env["data"]), "--out", str(tmp_path / "out"),
            "--max-steps", "1", "--set", "logging.progress=false", *extra]
    return cpt_cli(*args)


def _fake_checkpoint(ck, step: int):
    """A checkpoint folder with every part present (contents are placeholders)."""
    for rel in ("model", "optimizer", "rng"):
        (ck / rel).mkdir(parents=True)
    state = {"step": step, "world_size": 1, "micro_batches": step, "tokens_seen": 0,
             "sampler": {"epoch": 0, "position": step}}
    (ck / "trainer_state.json").write_text(json.dumps(state))
    for rel in ("lr_scheduler.pt", "config.yaml", "rng/rank-0.json"):
        (ck / rel).write_text("x")
    return ck


def _one_line(output: str) -> str:
    lines = [l for l in output.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize("extra, message", [
    (("--set", "training.max_stepz=3"), "unknown config key 'training.max_stepz'; did you mean 'max_steps'?"),
    (("--set", "training.max_steps=abc"), "training.max_steps: expected an integer"),
    (("--strategy", "ddq"), "unknown strategy 'ddq'; did you mean 'ddp'?"),
    (("--noise", "neftun"), "unknown noise 'neftun'; did you mean 'neftune'?"),
    (("--set", "strategy.bucket_cap=3"), "unknown option for strategy 'ddp' 'strategy.bucket_cap'"),
    (("--freeze", "everything"), "training.freeze: unknown 'everything'"),
    (("--set", "schedule.warmup_steps=5"), "schedule.warmup_steps (5) must be in [0, max_steps=1]"),
    (("--set", "lora.enabled=true", "--freeze", "non-embeddings"), "exclude each other"),
    # were torch tracebacks after the model had loaded
    (("--lr", "-1"), "optimizer.lr must be a positive finite number, got -1.0"),
    (("--set", "optimizer.betas=[0.9, 1.5]"), "optimizer.betas must be two numbers in [0, 1)"),
    (("--set", "optimizer.eps=-1"), "optimizer.eps must be >= 0"),
    (("--set", "optimizer.weight_decay=-0.1"), "optimizer.weight_decay must be >= 0"),
    (("--noise", "neftune", "--set", "noise.alpha=-1"), "noise 'neftune': alpha must be >= 0"),  # was after the model load
])
def test_config_errors(cpt_cli, env, tmp_path, extra, message):
    code, output = _run(cpt_cli, env, tmp_path, *extra)
    assert code == 1
    assert message in _one_line(output)
    assert not (tmp_path / "out").exists()  # nothing started


def test_missing_model_and_data(cpt_cli, env, tmp_path):
    code, output = cpt_cli("train", "--model", str(tmp_path / "nope"), "--data", str(env["data"]), "--max-steps", "1")
    assert code == 1 and f"model not found: {tmp_path / 'nope'}" in _one_line(output)
    code, output = _run(cpt_cli, env, tmp_path, data=tmp_path / "nodata")
    assert code == 1 and f"{tmp_path / 'nodata'}: prepared data folder not found" in _one_line(output)
    code, output = cpt_cli("train", "--model", str(env["model"]), "--max-steps", "1")
    assert code == 1 and "no training data" in _one_line(output)


def test_tokenizer_mismatch(cpt_cli, env, tmp_path):
    code, output = _run(cpt_cli, env, tmp_path, data=env["other"])
    line = _one_line(output)
    assert code == 1 and f"{env['other']}: tokenizer mismatch" in line and "sha256:" in line
    assert not (tmp_path / "out").exists()  # refused before the run started


def test_empty_dataset(cpt_cli, env, tmp_path):
    code, output = _run(cpt_cli, env, tmp_path, data=env["empty"])
    assert code == 1 and f"{env['empty']}: empty dataset (0 rows)" in _one_line(output)


def test_accumulation_larger_than_data(cpt_cli, env, tmp_path):
    code, output = _run(cpt_cli, env, tmp_path, "--accumulation-steps", "3", "--micro-batch-size", "2")
    line = _one_line(output)
    assert code == 1 and "accumulation (3 micro-batches per step) is larger than the data (2 micro-batches" in line
    code, output = _run(cpt_cli, env, tmp_path, "--micro-batch-size", "6")
    assert code == 1 and "smaller than one global micro-batch" in _one_line(output)


def test_corrupt_or_partial_checkpoint_on_resume(cpt_cli, env, tmp_path):
    partial = tmp_path / "out" / "checkpoints" / "step-3.tmp"
    partial.mkdir(parents=True)
    code, output = _run(cpt_cli, env, tmp_path, "--resume", str(partial))
    assert code == 1 and "incomplete checkpoint (no trainer_state.json" in _one_line(output)
    broken = _fake_checkpoint(tmp_path / "out" / "checkpoints" / "step-2", 2)
    (broken / "model" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": "pytorch_model-00001.bin"}}))
    code, output = _run(cpt_cli, env, tmp_path, "--resume", "auto")
    line = _one_line(output)
    assert code == 1 and "--resume auto: no intact checkpoint" in line and "model/pytorch_model-00001.bin is missing" in line


def test_dry_run_flag_exists(cpt_cli, env, tmp_path):
    code, output = _run(cpt_cli, env, tmp_path, "--dry-run")
    assert "no such option" not in output.lower()


def test_resume_past_max_steps_is_one_line(cpt_cli, env, tmp_path):
    from cptcore.train.integrity import write_checksums

    ck = _fake_checkpoint(tmp_path / "old" / "checkpoints" / "step-5", 5)
    write_checksums(ck)
    # was: resumed, ran 0 steps, re-exported step 5 as OUT/final with "final loss None"
    code, output = _run(cpt_cli, env, tmp_path, "--resume", str(ck))
    assert code == 1 and f"{ck} is at step 5, past training.max_steps=1" in _one_line(output)
    assert not (tmp_path / "out").exists()


def test_fresh_run_into_a_finished_run_is_refused(cpt_cli, env, tmp_path):
    (tmp_path / "out" / "final").mkdir(parents=True)
    (tmp_path / "out" / "summary.json").write_text("{}")
    code, output = _run(cpt_cli, env, tmp_path)
    assert code == 1 and "already holds a run (summary.json, final): continue it with --resume auto" in _one_line(output)


def test_resume_auto_without_checkpoint_starts_a_clean_metrics_file(cpt_cli, env, tmp_path):
    logs = tmp_path / "out" / "logs"
    logs.mkdir(parents=True)
    (logs / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n{"step": 2, "loss": 98.0}\n')  # killed before a save
    code, output = _run(cpt_cli, env, tmp_path, "--resume", "auto")
    assert code == 0, output
    rows = [json.loads(l) for l in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and rows[0]["loss"] != 99.0  # the old lines were appended to before
