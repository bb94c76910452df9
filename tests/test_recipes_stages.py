"""``stages:`` in the run config and ``training.trainable`` (issue 14 items 1-2): schema
errors, token budgets, new_rows bit-identical (tied and untied), stage outputs and
summary, a changed finished stage refused, embeddings without weight decay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cptcore.errors import ConfigError, CptError
from cptcore.plugins import make_plugin_manager

from train_support import DATA, prepare, run_config, tiny_model


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir):
    root = tmp_path_factory.mktemp("stages_env")
    tok = smollm2_tokenizer_dir
    small = root / "small.jsonl"
    lines = (DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[:2]  # 10 rows of 64 tokens
    small.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        "tied": tiny_model(root / "tied", tok),
        "untied": tiny_model(root / "untied", tok, tie_word_embeddings=False),
        "train": prepare(root / "train", tok, [str(small)], max_length=64),
        "eval": prepare(root / "eval", tok, [str(DATA / "en_python_docs_sample.jsonl")], max_length=64),
    }


def _pm():
    return make_plugin_manager(entrypoints=False)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def _vocab(model: Path) -> int:
    return json.loads((model / "config.json").read_text())["vocab_size"]


def _cfg(env, out, stages, model="tied", **sets):
    if stages:  # [] given explicitly is refused (an empty list is not "no stages")
        sets["stages"] = stages
    return run_config(out, env[model], [str(env["train"])], logging__loggers=["jsonl"], **sets)


@pytest.mark.parametrize("stages, match", [
    ([{"name": "a", "trainable": "bogus", "budget": {"steps": 1}}], r"stage 'a'.*unknown trainable set 'bogus'"),
    ([{"name": "a", "budget": {"steps": 1, "tokens": "1k"}}], r"stage 'a'.budget: give exactly one"),
    ([{"name": "a", "budget": {}}], r"stage 'a'.budget: give exactly one"),
    ([{"name": "a"}], r"stage 'a': no budget"),
    ([{"name": "a", "budget": {"steps": 1}}, {"name": "a", "budget": {"steps": 1}}], r"stage 'a': the name appears twice"),
    ([{"name": "a", "budget": {"steps": 1}, "strategy": {"name": "zero2"}}], r"stage 'a': 'strategy' may not be overridden"),
    ([{"name": "a", "budget": {"steps": 1}, "optimiser": {"lr": 1}}], r"stage 'a': unknown key 'optimiser'"),
    ([{"name": "a", "budget": {"steps": 1}, "optimizer": {"lrr": 1}}], r"stage 'a'.*unknown config key 'optimizer.lrr'"),
    ([{"name": "a", "budget": {"steps": 1}, "training": {"max_steps": 3}}], r"stage 'a': 'training.max_steps' may not"),
    ([{"name": "A b", "budget": {"steps": 1}}], r"stages\[0\]: name must match"),
    ([{"name": "a", "budget": {"tokens": "lots"}}], r"stage 'a'.budget.tokens: expected a count such as 2000000, 2M or 1.5B, got 'lots'"),
    ([{"name": "a", "trainable": "new_rows", "budget": {"steps": 1}}], r"stage 'a'.*resize_report.json is missing"),
    ([{"name": "a", "trainable": ["model.nothing.*"], "budget": {"steps": 1}}],
     r"stage 'a': .*pattern 'model.nothing.\*' matches no parameter name"),
    ([{"name": "a", "trainable": "lora", "budget": {"steps": 1}},
      {"name": "b", "trainable": "embeddings", "budget": {"steps": 1}, "lora": {"enabled": True}}],
     r"stage 'b'.*exclude each other"),
    # checked against the model's rows at precheck, before stage 'a' trains (review14)
    ([{"name": "a", "budget": {"steps": 1}},
      {"name": "b", "trainable": {"new_rows_from": 10**9}, "budget": {"steps": 1}}],
     r"stage 'b': .*new_rows_from=1000000000 leaves no new row"),
])
def test_stage_schema_errors_are_one_line_naming_the_stage(env, tmp_path, stages, match):
    from cptcore.recipes.stages import precheck_stages

    with pytest.raises(CptError, match=match) as info:
        precheck_stages(_cfg(env, tmp_path / "out", stages), _pm())
    assert "\n" not in str(info.value)


def test_token_budget_converts_to_steps_rounding_up():
    from cptcore.recipes.stages import budget_steps, parse_tokens

    assert parse_tokens("2M", "b") == 2_000_000 and parse_tokens("1.5k", "b") == 1500 and parse_tokens(640, "b") == 640
    assert budget_steps({"tokens": "1280"}, 128, "s") == 10  # exact
    assert budget_steps({"tokens": 1281}, 128, "s") == 11  # at least the budget: rounds up
    assert budget_steps({"tokens": 5}, 128, "s") == 1
    assert budget_steps({"steps": 7}, None, "s") == 7


def test_token_budget_uses_the_stage_batch(env, tmp_path):
    from cptcore.recipes.stages import precheck_stages

    stages = [{"name": "a", "budget": {"tokens": "1k"}},  # 2 rows x 64 tokens x dp 1 x 1 = 128 per step
              {"name": "b", "budget": {"tokens": 1000}, "training": {"accumulation_steps": 2}}]  # 256 per step
    recipe = precheck_stages(_cfg(env, tmp_path / "out", stages), _pm())
    assert [(s.tokens_per_step, s.steps) for s in recipe.stages] == [(128, 8), (256, 4)]
    assert [s.plan.config.training.max_steps for s in recipe.stages] == [8, 4]
    assert recipe.stages[1].plan.config.training.out_dir == str(tmp_path / "out" / "stages" / "b")


def test_fresh_precheck_accepts_the_empty_stage_folders_another_rank_created(env, tmp_path):
    """Under ``--nproc-per-node`` every rank prechecks: rank 0's precheck creates the (empty)
    stage folders, which must not make rank 1 refuse the fresh run; a started stage
    (its ``stage.json``) still is refused."""
    from cptcore.recipes.stages import precheck_stages

    stages = [{"name": "a", "budget": {"steps": 1}}, {"name": "b", "budget": {"steps": 1}}]
    out = tmp_path / "out"
    precheck_stages(_cfg(env, out, stages), _pm())  # "rank 0"
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["a", "b"]
    precheck_stages(_cfg(env, out, stages), _pm())  # "rank 1": the same fresh run
    (out / "stages" / "a" / "stage.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds a staged run"):
        precheck_stages(_cfg(env, out, stages), _pm())


def _check_new_rows(before: dict, after: dict, n: int, tied: bool) -> None:
    emb = ["model.embed_tokens.weight"] + ([] if tied else ["lm_head.weight"])
    assert set(after) == set(before)
    for k in before:
        if k in emb:
            assert torch.equal(before[k][:n], after[k][:n]), k  # every original row bit-identical
            if k == emb[-1]:  # the output head (all rows get gradient; the data never holds the new ids)
                assert not torch.equal(before[k][n:], after[k][n:]), k  # the new rows trained
        else:
            assert torch.equal(before[k], after[k]), k  # every non-embedding weight bit-identical


def test_two_stages_new_rows_then_all_tied(env, tmp_path):
    from cptcore.train.loop import train

    out, n = tmp_path / "run", _vocab(env["tied"]) - 10
    stages = [{"name": "align", "trainable": {"new_rows_from": n}, "budget": {"steps": 3}, "optimizer": {"lr": 1e-2}},
              {"name": "full", "budget": {"tokens": 256}, "schedule": {"name": "constant", "warmup_steps": 0}}]
    cfg = _cfg(env, out, stages, data__eval=[f"en={env['eval']}"], training__eval_batches=2)
    summary = train(cfg, _pm())
    base = _weights(env["tied"])
    _check_new_rows(base, _weights(out / "stages" / "align" / "final"), n, tied=True)
    full = _weights(out / "stages" / "full" / "final")
    assert all(torch.equal(full[k], v) for k, v in _weights(out / "final").items())
    assert any(not torch.equal(full[k], v) for k, v in _weights(out / "stages" / "align" / "final").items())
    assert sorted(p.name for p in (out / "stages" / "align").iterdir()) == [
        "checkpoints", "config.yaml", "final", "logs", "stage.json", "summary.json"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert [(s["name"], s["steps"], s["tokens"], s["trainable"]) for s in saved["stages"]] == [
        ("align", 3, 3 * 128, {"new_rows": n}), ("full", 2, 2 * 128, "all")]
    assert all(isinstance(s["final_loss"], float) and set(s["eval"]) == {"en"} for s in saved["stages"])
    assert [s["data_mixing"]["mode"] for s in saved["stages"]] == ["rows", "rows"]  # per-stage realised shares
    assert all(sum(v["rows"] for v in s["data_mixing"]["sources"].values()) == s["steps"] * 2 for s in saved["stages"])
    assert set(saved["baseline_eval"]) == {"en"} and saved["steps"] == 5
    assert (out / "baseline.json").is_file() and (out / "config.yaml").is_file()
    state = json.loads((out / "stages" / "full" / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["stage"]["name"] == "full" and state["stage"]["index"] == 1
    metrics = [json.loads(l) for l in (out / "stages" / "full" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # the stage's counter starts at 0
    # a finished stage is never rerun; a changed finished stage is refused naming it
    again = train(_cfg(env, out, stages, data__eval=[f"en={env['eval']}"], training__eval_batches=2,
                       checkpointing__resume="auto"), _pm())
    assert [s["steps"] for s in again["stages"]] == [3, 2]
    assert all(torch.equal(full[k], v) for k, v in _weights(out / "final").items())
    changed = [dict(stages[0], optimizer={"lr": 2e-2}), stages[1]]
    with pytest.raises(ConfigError, match=r"stage 'align' finished with a different recipe"):
        train(_cfg(env, out, changed, data__eval=[f"en={env['eval']}"], training__eval_batches=2,
                   checkpointing__resume="auto"), _pm())
    with pytest.raises(ConfigError, match="already holds"):
        train(_cfg(env, out, stages), _pm())


def test_new_rows_untied_leaves_original_rows_bit_identical(env, tmp_path, capsys):
    from cptcore.train.loop import train

    out, n = tmp_path / "untied", _vocab(env["untied"]) - 10
    train(_cfg(env, out, [{"name": "align", "trainable": {"new_rows_from": n}, "budget": {"steps": 3}}],
               model="untied", optimizer__lr=1e-2), _pm())
    _check_new_rows(_weights(env["untied"]), _weights(out / "final"), n, tied=False)
    hidden = json.loads((env["untied"] / "config.json").read_text())["hidden_size"]
    line = next(x for x in capsys.readouterr().err.splitlines() if "parameters trainable" in x)
    assert f", {2 * 10 * hidden:,} of " in line and f"(optimizer state for {2 * (n + 10) * hidden:,}: " in line, line


@pytest.mark.parametrize("model", ["tied", "untied"])
def test_new_rows_count_is_the_new_rows_in_the_run_and_the_dry_run(env, tmp_path, model):
    """The trainable count printed for new_rows is the new rows (tied: once), not the
    whole matrices that carry requires_grad; the memory estimate keeps the whole matrices."""
    from transformers import AutoModelForCausalLM

    from cptcore.recipes.trainable import apply_trainable, count_trainable
    from cptcore.train.dryrun import plan_dry_run, render

    n = _vocab(env[model]) - 10
    hidden = json.loads((env[model] / "config.json").read_text())["hidden_size"]
    new = (1 if model == "tied" else 2) * 10 * hidden
    cfg = _cfg(env, tmp_path / "o", [], model=model, training__trainable={"new_rows_from": n})
    hf = AutoModelForCausalLM.from_pretrained(env[model])
    assert apply_trainable(hf, cfg) == new == count_trainable(hf, cfg)
    result = plan_dry_run(cfg, _pm(), 1)
    assert result.trainable == new and result.shape.trainable == new // 10 * (n + 10)
    lines = []
    render(result, lines.append)
    assert f"{new:,} trainable (optimizer state for {result.shape.trainable:,}: " in lines[2], lines[2]
    whole, plain = AutoModelForCausalLM.from_pretrained(env[model]), _cfg(env, tmp_path / "o", [], model=model)
    assert apply_trainable(whole, plain) == count_trainable(whole, plain) == sum(p.numel() for p in whole.parameters())


def test_embeddings_get_no_weight_decay_unless_asked(env):
    from transformers import AutoModelForCausalLM

    from cptcore.recipes.trainable import embedding_parameters
    from cptcore.train.optim import param_groups

    for kind in ("tied", "untied"):
        model = AutoModelForCausalLM.from_pretrained(env[kind])
        emb = {n for n, _ in embedding_parameters(model)}
        assert emb == ({"model.embed_tokens.weight"} | (set() if kind == "tied" else {"lm_head.weight"}))
        decayed = {n for g in param_groups(model, 0.1) if g["weight_decay"] for n in g["names"]}
        assert decayed and not decayed & emb and all("norm" not in n for n in decayed)
        decayed = {n for g in param_groups(model, 0.1, embedding_weight_decay=True) if g["weight_decay"]
                   for n in g["names"]}
        assert emb <= decayed


def test_trainable_sets_without_stages(env, tmp_path):
    """training.trainable works in a plain run; freeze=non-embeddings is the same set as embeddings."""
    from transformers import AutoModelForCausalLM

    from cptcore.recipes.trainable import apply_trainable

    def trained(**sets):
        model = AutoModelForCausalLM.from_pretrained(env["untied"])
        apply_trainable(model, _cfg(env, tmp_path, [], model="untied", **sets))
        return sorted(n for n, p in model.named_parameters() if p.requires_grad)

    emb = ["lm_head.weight", "model.embed_tokens.weight"]
    assert trained(training__trainable="embeddings") == emb == trained(training__freeze="non-embeddings")
    non = trained(training__trainable="non_embeddings")
    assert non and not set(non) & set(emb) and len(non) + 2 == len(trained())
    assert trained(training__trainable=["model.layers.0.*", "lm_head.*"]) == ["lm_head.weight"] + [
        n for n in non if n.startswith("model.layers.0.")]
    with pytest.raises(ConfigError, match="disagree"):
        trained(training__trainable="non_embeddings", training__freeze="non-embeddings")
