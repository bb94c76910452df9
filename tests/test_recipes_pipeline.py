"""``cpt pipeline``: a recipe from raw text to the trained model, step records, reruns,
an interrupted prepare step, the dry-run plan, presets and bad recipes. A tiny random-init
LLaMA with SmolLM2's real tokenizer and a few KB of the bundled Chinese/English text."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cptcore.errors import ConfigError
from cptcore.recipes.pipeline import load_recipe, parse_tokens, preset_names
from cptcore.recipes.pipeline_run import make_plan, run_pipeline

STEPS = ["tokenizer", "expand", "resize", "prepare", "train", "export"]


def _head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    from cptcore.assets import bundled
    from cptcore.testing import make_tiny_llama

    d = tmp_path_factory.mktemp("pipeline_inputs")
    _head(bundled("zh_law_train.jsonl"), d / "zh.jsonl", 12)
    _head(bundled("zh_law_heldout.jsonl"), d / "zh_heldout.jsonl", 3)
    _head(bundled("en_retained_sample.jsonl"), d / "en.jsonl", 3)
    make_tiny_llama(d / "base", smollm2_tokenizer_dir, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return d


def _recipe(inputs: Path, out: Path, **changes) -> Path:
    tree = {
        "model": str(inputs / "base"), "out": str(out),
        "steps": {
            "tokenizer": {"input": ["zh.jsonl"], "vocab_size": 1200, "model_type": "bpe", "num_threads": 1, "character_coverage": 0.98},
            "expand": {"method": "auto"},
            "resize": {"init": "mean", "retain": "en.jsonl", "check_tokens": 64, "allow_unsafe": True},
            "prepare": {"max_length": 64, "sets": {"zh": ["zh.jsonl"], "en": ["en.jsonl"]},
                        "eval": {"zh_heldout": ["zh_heldout.jsonl"]}},
            "train": {"config": {"training": {"micro_batch_size": 2, "eval_every": 0},
                                 "stages": [{"name": "align", "trainable": "new_rows", "budget": {"steps": 1}},
                                            {"name": "all", "trainable": "all", "budget": {"tokens": 128}}],
                                 "data": {"train": ["prepared/zh:1", "prepared/en:0.5"]},
                                 "logging": {"loggers": ["jsonl"], "progress": False}}},
        },
    }
    for dotted, value in changes.items():
        node = tree
        *head, last = dotted.split("__")
        for part in head:
            node = node[part]
        node[last] = value
    path = inputs / f"recipe_{out.name}.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def _files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except logs, records and timed reports."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not rel.endswith(("manifest.json", ".jsonl", "_report.json", "summary.json")) \
                and "/logs/" not in f"/{rel}" and ".cpt_" not in rel and "tfevents" not in rel:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _ran(lines: list[str]) -> list[str]:
    return [line.split("]")[0][1:] for line in lines if "] running:" in line]


@pytest.fixture(scope="module")
def first_run(inputs, tmp_path_factory):
    from cptcore.plugins import make_plugin_manager

    out = tmp_path_factory.mktemp("run") / "a"
    lines: list[str] = []
    run_pipeline(load_recipe(_recipe(inputs, out)), make_plugin_manager(entrypoints=False), echo=lines.append)
    return out, lines


def test_pipeline_end_to_end_then_rerun_skips_everything(first_run, inputs, cpt_cli):
    out, lines = first_run
    assert _ran(lines) == STEPS
    for step in STEPS:
        record = json.loads((out / "steps" / step / ".cpt_step.json").read_text())
        assert record["step"] == step and len(record["hash"]) == 64
    train = json.loads((out / "steps" / "train" / ".cpt_step.json").read_text())
    assert train["result"]["steps"] == 2 and train["upstream"].keys() == {"resize", "prepare"}
    assert [s["name"] for s in train["result"]["stages"]] == ["align", "all"]  # the ledger across stages
    # the expanded vocabulary reached the trained model, the original rows first
    cfg = json.loads((out / "steps" / "export" / "model" / "config.json").read_text())
    resize = json.loads((out / "steps" / "resize" / ".cpt_step.json").read_text())["result"]
    assert cfg["vocab_size"] == resize["new_rows"] > resize["old_rows"] == 49152
    before = _files(out)
    code, output = cpt_cli("pipeline", str(_recipe(inputs, out)))
    assert code == 0, output
    assert "running" not in output and output.count("skipped: done, unchanged") == 6
    assert _files(out) == before


def test_changed_option_reruns_that_step_and_downstream(first_run, inputs, cpt_cli, tmp_path):
    import shutil

    out = tmp_path / "a"  # a copy: the kill test compares against the untouched first run
    shutil.copytree(first_run[0], out)
    recipe = _recipe(inputs, out, steps__prepare__seed=1, steps__prepare__shuffle_window=4)
    code, output = cpt_cli("pipeline", str(recipe), "--dry-run")
    assert code == 0, output
    plan = {line.split()[0]: line.split()[1] for line in output.splitlines() if line.startswith("  ") and "stage" not in line}
    assert plan == {"tokenizer": "skip", "expand": "skip", "resize": "skip", "prepare": "RUN", "train": "RUN", "export": "RUN"}
    assert "option seed changed" in output and "upstream prepare changed" in output
    # the previous run measured tokens/s: 2 steps x 2 rows x 64 tokens, with a time estimate
    assert "stage align" in output and "128 tokens (1 steps × 128 tokens)" in output and "tokens/s measured" in output
    assert "stage all" in output and "128 tokens (budget.tokens)" in output
    zh_before = _files(out / "steps" / "prepare" / "zh")
    tok_before = (out / "steps" / "tokenizer" / ".cpt_step.json").read_bytes()
    code, output = cpt_cli("pipeline", str(recipe))
    assert code == 0, output
    assert [l.split("]")[0][1:] for l in output.splitlines() if "] running:" in l] == ["prepare", "train", "export"]
    assert (out / "steps" / "tokenizer" / ".cpt_step.json").read_bytes() == tok_before
    assert _files(out / "steps" / "prepare" / "zh") != zh_before  # the shuffle really changed the rows


KILLER = """
import os, signal, sys
import cptcore.data.pipeline as dp
from cptcore.plugins import make_plugin_manager
from cptcore.recipes.pipeline import load_recipe
from cptcore.recipes.pipeline_run import run_pipeline
real, calls = dp.prepare, []
def prepare(pm, args):
    calls.append(args.out)
    result = real(pm, args)
    if len(calls) == 2:  # two of the three sets written: kill -9 inside the prepare step
        os.kill(os.getpid(), signal.SIGKILL)
    return result
dp.prepare = prepare
run_pipeline(load_recipe(sys.argv[1]), make_plugin_manager(entrypoints=False))
"""


@pytest.mark.slow  # a subprocess killed with SIGKILL
def test_rerun_after_kill_in_prepare_gives_the_same_outputs(first_run, inputs, tmp_path, cpt_cli):
    out_a, _ = first_run
    out_b = tmp_path / "b"
    recipe = _recipe(inputs, out_b)
    script = tmp_path / "killer.py"
    script.write_text(KILLER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(recipe)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out_b / "steps" / "prepare" / "zh").is_dir() and not (out_b / "steps" / "prepare" / ".cpt_step.json").exists()
    code, output = cpt_cli("pipeline", str(recipe), "--dry-run")
    assert "prepare    RUN   interrupted (no completion record)" in output and "resize     skip" in output
    code, output = cpt_cli("pipeline", str(recipe))
    assert code == 0, output
    assert [l.split("]")[0][1:] for l in output.splitlines() if "] running:" in l] == ["prepare", "train", "export"]
    assert _files(out_b / "steps" / "prepare") == _files(out_a / "steps" / "prepare")
    assert _files(out_b / "steps" / "export") == _files(out_a / "steps" / "export")  # bit-identical model
    for step in STEPS:
        rec = lambda o: json.loads((o / "steps" / step / ".cpt_step.json").read_text())["hash"]  # noqa: E731
        assert rec(out_a) == rec(out_b)  # contents hashed, not paths


def test_bad_recipes_are_one_line_errors(inputs, tmp_path):
    bad = _recipe(inputs, tmp_path / "x", steps__prepare__max_lenght=64)
    with pytest.raises(ConfigError, match=r"recipe_x\.yaml: steps\.prepare\.max_lenght: unknown key \(did you mean 'max_length'\?\)"):
        load_recipe(bad)
    missing = _recipe(inputs, tmp_path / "y", steps__tokenizer__input=["nope.jsonl"])
    with pytest.raises(ConfigError, match=r"recipe_y\.yaml: steps\.tokenizer\.input: input file not found: nope\.jsonl"):
        load_recipe(missing)
    with pytest.raises(ConfigError, match=r"unknown preset; did you mean 'chinese-llama'"):
        load_recipe(preset="chinese-lama")
    with pytest.raises(ConfigError, match=r"steps\.trian: unknown key \(did you mean 'train'\?\)"):
        load_recipe(_recipe(inputs, tmp_path / "z"), sets=["steps.trian.config={}"])
    with pytest.raises(ConfigError, match=r"steps\.train\.config\.model\.path: set by the pipeline"):
        load_recipe(_recipe(inputs, tmp_path / "w"), sets=["steps.train.config.model.path=/m"])


def test_presets_listed_merged_and_planned(cpt_cli, inputs, tmp_path):
    assert preset_names() == ["chinese-llama", "colossal-llama2"]
    code, output = cpt_cli("recipes")
    assert code == 0 and "arXiv:2304.08177" in output and "Colossal-LLaMA-2" in output
    code, output = cpt_cli("pipeline", "--preset", "colossal-llama2", "--set", "steps.prepare.max_length=128", "--print")
    assert code == 0 and "max_length: 128" in output and "mixing: bucketed" in output
    recipe = load_recipe(preset="colossal-llama2", sets=[f"model={inputs / 'base'}", f"out={tmp_path / 'o'}"])
    assert [p.name for p in make_plan(recipe)] == STEPS and all(p.run for p in make_plan(recipe))
    code, output = cpt_cli("pipeline", "--preset", "colossal-llama2", "--set", f"model={inputs / 'base'}",
                           "--set", f"out={tmp_path / 'o'}", "--dry-run")
    assert code == 0, output
    # budgets: micro_batch 2 x max_length 256 = 512 tokens a step
    assert "stage align" in output and "10,240 tokens (20 steps × 512 tokens)" in output
    assert "stage inject" in output and "20,480 tokens" in output and "time unknown" in output
    assert parse_tokens("2M", "x") == 2_000_000 and parse_tokens("1.5k", "x") == 1500


def test_example_multistage_recipe_loads_with_the_budgets_docs_show(tmp_path):
    """examples/multistage.yaml (run in docs/multistage.md) loads, its small eval files
    exist (load_recipe refuses a missing input), and its stages are 4 + 8 + 4 steps of
    512 tokens, as the guide's ledger shows."""
    from cptcore.recipes.pipeline_run import stage_budgets

    example = Path(__file__).resolve().parents[1] / "examples" / "multistage.yaml"
    recipe = load_recipe(example, sets=[f"out={tmp_path / 'o'}"])
    assert [(n, t) for n, t, _ in stage_budgets(recipe)] == [("align", 2048), ("inject", 4096), ("replay", 2048)]
    assert set(recipe.steps["prepare"]["eval"]) == {"zh_heldout", "en_retained"}
