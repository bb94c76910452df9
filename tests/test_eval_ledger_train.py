"""The forgetting ledger during `cpt train`: the step-0 baseline (against plain torch),
bpb_delta, budgets (warn / stop + resume / keep_best + OUT/best), multiple-choice sets
during training, the per-set summary table. Tiny random-init LLaMA, scripted scorers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cptcore.errors import ConfigError, CptError
from cptcore.eval.bpb import result as bpb_result
from cptcore.eval.ledger_run import RunLedger
from train_support import DATA, prepare, run_config, tiny_model


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir):
    root = tmp_path_factory.mktemp("ledger_env")
    tok = smollm2_tokenizer_dir
    small = root / "small.jsonl"
    lines = (DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    small.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"root": root, "tok": tok, "model": tiny_model(root / "model", tok),
            "zh": prepare(root / "zh", tok, [str(small)], max_length=64),
            "en": prepare(root / "en", tok, [str(DATA / "en_python_docs_sample.jsonl")], max_length=64)}


def _train(cfg):
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.loop import train

    return train(cfg, make_plugin_manager(entrypoints=False))


def _rows(out):
    return [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def _script(monkeypatch, values):
    """evaluate_prepared -> scripted bpb: ``values[set][k]`` at the k-th call of that set."""
    calls = {name: 0 for name in values}

    def fake(model, path, **kw):
        name = next(n for n in values if path.name == n)
        v = values[name][calls[name]]
        calls[name] += 1
        return bpb_result(v * math.log(2) * 1000, 500, 1000)

    monkeypatch.setattr("cptcore.train.trainer.evaluate_prepared", fake)
    return calls


def _plain_torch_bpb(model_dir, folder, rows):
    """Σ NLL / ln 2 / Σ label_bytes of the first ``rows`` rows, each packed document run
    on its own (no cptcore code: segments from position_ids)."""
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    ds = load_from_disk(str(folder)) if (folder / "dataset_info.json").is_file() else None
    if ds is None:
        from cptcore.train.data import open_dataset

        ds = open_dataset(folder)
    nll, nbytes = 0.0, 0
    for i in range(rows):
        r = ds[i]
        ids, labels, pos = list(r["input_ids"]), list(r["labels"]), list(r["position_ids"])
        nbytes += int(r["label_bytes"])
        starts = [t for t, p in enumerate(pos) if p == 0] + [len(ids)]
        for a, b in zip(starts, starts[1:]):
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids[a:b]])).logits[0].double(), -1)
            for j in range(b - a):
                t = a + j + 1
                if t < len(ids) and labels[t] != -100:
                    nll -= float(logp[j, labels[t]])
    return nll / math.log(2) / nbytes


def test_step0_baseline_equals_plain_torch_and_deltas(env, tmp_path):
    out = tmp_path / "run"
    cfg = run_config(out, env["model"], [str(env["zh"])], [f"zh={env['zh']}", f"en={env['en']}"],
                     training__max_steps=2, training__eval_every=1, training__eval_batches=2)
    summary = _train(cfg)
    rows = _rows(out)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["tokens_seen"] == 0 and "loss" not in rows[0]
    expect = _plain_torch_bpb(env["model"], env["en"], 4)  # 2 batches of 2 rows
    assert rows[0]["eval/en/bpb"] == pytest.approx(expect, rel=1e-5)
    for r in rows:
        for n in ("zh", "en"):
            assert r[f"eval/{n}/bpb_delta"] == pytest.approx(r[f"eval/{n}/bpb"] - rows[0][f"eval/{n}/bpb"], abs=1e-12)
    led = summary["ledger"]
    assert led["baseline"]["en"]["bpb"] == rows[0]["eval/en/bpb"] and led["baseline_step"] == 0
    table = {s["set"]: s for s in led["sets"]}
    assert table["zh"]["final"] == rows[-1]["eval/zh/bpb"] and table["zh"]["role"] == "domain"
    assert table["zh"]["best"] == min(r["eval/zh/bpb"] for r in rows)
    assert json.loads((out / "summary.json").read_text())["ledger"] == json.loads(json.dumps(led))
    # the report reads the step-0 evaluation as its baseline
    from cptcore.report import write_report

    md = write_report(out).summary_md.read_text()
    assert "no step-0 evaluation" not in md and f"{rows[0]['eval/en/bpb']:.4f}" in md


def test_stop_within_one_interval_then_resume_auto_keeps_baseline(env, tmp_path, monkeypatch, capfd):
    out = tmp_path / "run"
    base = dict(training__max_steps=6, training__eval_every=2, checkpointing__keep_last=1,
                eval__budget={"en": 0.05}, eval__on_budget="stop")
    # steps 0, 2, 4: en crosses its budget (1.0 + 0.05) at step 4 -> stop there
    _script(monkeypatch, {"zh": [2.0, 1.9, 1.8], "en": [1.0, 1.04, 1.2]})
    s = _train(run_config(out, env["model"], [str(env["zh"])], [f"zh={env['zh']}", f"en={env['en']}"], **base))
    assert s["steps"] == 4 and s["ledger"]["stopped"]["step"] == 4 and "'en'" in s["stopped"] and "step 4" in s["stopped"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-4"] and (out / "final" / "config.json").is_file()
    err = capfd.readouterr().err
    assert "beyond its budget 0.05 at step 4" in err and "stopped early" in err
    # resumed (warn now): no step-0 rescoring, the original baseline, one warning per breach
    calls = _script(monkeypatch, {"zh": [1.7], "en": [1.3]})
    s2 = _train(run_config(out, env["model"], [str(env["zh"])], [f"zh={env['zh']}", f"en={env['en']}"],
                           **dict(base, eval__on_budget="warn", checkpointing__resume="auto")))
    assert calls == {"zh": 1, "en": 1} and s2["steps"] == 6 and s2["stopped"] is None and s2["ledger"]["stopped"] is None
    rows = _rows(out)
    assert [r["step"] for r in rows if "eval/en/bpb" in r] == [0, 2, 4, 6]
    assert rows[-1]["eval/en/bpb_delta"] == pytest.approx(0.3) and s2["ledger"]["baseline"]["en"]["bpb"] == pytest.approx(1.0)
    en = next(r for r in s2["ledger"]["sets"] if r["set"] == "en")
    assert en["within_budget"] is False and en["budget"] == 0.05 and en["role"] == "retained"
    assert capfd.readouterr().err.count("beyond its budget") == 1


def test_keep_best_picks_the_scripted_step_and_exports_it(env, tmp_path, monkeypatch):
    out = tmp_path / "run"
    # gains 0.1, 0.3, (0.4 but en over budget), 0.5, (over), (over): best = step 4
    _script(monkeypatch, {"zh": [2.0, 1.9, 1.7, 1.6, 1.5, 1.4, 1.3], "en": [1.0, 1.01, 1.02, 1.10, 1.03, 1.2, 1.3]})
    s = _train(run_config(out, env["model"], [str(env["zh"])], [f"zh={env['zh']}", f"en={env['en']}"],
                          training__max_steps=6, training__eval_every=1, checkpointing__keep_last=1,
                          eval__budget={"en": 0.05}, eval__on_budget="keep_best"))
    assert s["ledger"]["best"]["step"] == 4 and s["ledger"]["best"]["gain"] == pytest.approx(0.5)
    assert s["ledger"]["best_dir"] == str(out / "best")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]  # kept past keep_last
    from transformers import AutoModelForCausalLM

    from cptcore.train.export import load_checkpoint_weights

    best = AutoModelForCausalLM.from_pretrained(out / "best").eval()
    ref = AutoModelForCausalLM.from_pretrained(env["model"])
    load_checkpoint_weights(ref, out / "checkpoints" / "step-4")
    final = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    ids = torch.arange(3, 30)[None]
    with torch.no_grad():
        assert torch.equal(best(input_ids=ids).logits, ref.eval()(input_ids=ids).logits)
        assert not torch.equal(best(input_ids=ids).logits, final(input_ids=ids).logits)


def test_mc_set_during_training_equals_eval_mc(env, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptcore.eval.mc import evaluate_mc, read_items

    items_file = tmp_path / "mc.jsonl"
    items_file.write_text("".join((DATA / "mc" / "mmlu_sample_test.jsonl").read_text().splitlines(True)[:4]))
    out = tmp_path / "run"
    s = _train(run_config(out, env["model"], [str(env["zh"])], [f"zh={env['zh']}"], training__max_steps=1,
                          data__eval_mc={"mmlu": str(items_file)}, training__eval_batches=1))
    rows = _rows(out)
    tok = AutoTokenizer.from_pretrained(str(env["tok"]))
    items = read_items(items_file)
    for row, folder in ((rows[0], env["model"]), (rows[-1], out / "final")):
        ref = evaluate_mc(AutoModelForCausalLM.from_pretrained(str(folder)).eval(), tok, items)
        assert row["eval/mmlu/acc"] == ref.accuracy["letter"] and row["eval/mmlu/items"] == 4
        assert {row[f"eval/mmlu/acc_{m}"] for m in ref.accuracy} == set(ref.accuracy.values()) | set()
        assert [row[f"eval/mmlu/acc_{m}"] for m in ref.accuracy] == list(ref.accuracy.values())
    assert rows[-1]["eval/mmlu/acc_delta"] == rows[-1]["eval/mmlu/acc"] - rows[0]["eval/mmlu/acc"]
    assert "eval_loss" in rows[0] and s["final_eval"]["mmlu"]["acc"] == rows[-1]["eval/mmlu/acc"]
    assert next(r for r in s["ledger"]["sets"] if r["set"] == "mmlu")["role"] == "mc"


def test_budget_and_mc_config_errors():
    from cptcore.config import load_config

    with pytest.raises(ConfigError, match="'mc' is a multiple-choice set"):
        load_config(None, overrides={"data.eval": ["law=/d/x"], "data.eval_mc": ["mc=/d/mc.jsonl"]},
                    sets=["eval.budget.mc=0.1"])
    with pytest.raises(ConfigError, match="keep_best needs a domain set"):
        load_config(None, overrides={"data.eval": ["law=/d/x"]}, sets=["eval.budget.law=0.1", "eval.on_budget=keep_best"])
    with pytest.raises(ConfigError, match="both data.eval and data.eval_mc"):
        load_config(None, overrides={"data.eval": ["law=/d/x"], "data.eval_mc": ["law=/d/mc.jsonl"]})
    with pytest.raises(ConfigError, match="finite number >= 0"):
        load_config(None, overrides={"data.eval": ["law=/d/x", "en=/d/y"]}, sets=["eval.budget.en=nan"])
    cfg = load_config(None, overrides={"data.eval_mc": ["mmlu=/d/mc.jsonl"]})
    assert cfg.data.eval_mc == {"mmlu": "/d/mc.jsonl"}
    # an unnamed FILE is named after the file without its extension (not 'mc.jsonl')
    assert load_config(None, overrides={"data.eval_mc": ["/d/mc.jsonl"]}).data.eval_mc == {"mc": "/d/mc.jsonl"}


def test_run_ledger_progress_state_and_corrupt_state():
    led = RunLedger(["zh", "en"], {"en": 0.05}, "warn")
    led.set_baseline({"eval/zh/bpb": 2.19, "eval/en/bpb": 1.01, "eval/en/loss": 3.0})
    v = led.observe(5, {"eval/zh/bpb": 2.11, "eval/en/bpb": 1.07})
    assert led.progress_text() == " zh 2.110(-0.080) en 1.070(+0.060)"
    assert len(v.warnings) == 1 and v.stop is None and not v.save
    again = RunLedger(["zh", "en"], {"en": 0.05}, "warn")
    again.load_state_dict(json.loads(json.dumps(led.state_dict())), "x")
    assert again.state_dict() == led.state_dict() and again.table() == led.table()
    with pytest.raises(CptError, match=r"^ckpt/trainer_state.json: corrupt 'ledger' entry"):
        again.load_state_dict({"baseline": {"zh": {"bpb": "1"}}}, "ckpt/trainer_state.json")


def test_set_added_on_resume_gets_its_own_baseline_and_budget(env, tmp_path, monkeypatch, capfd):
    """A set the checkpoint's baseline lacks (added with a budget on resume) is not left
    unchecked: its first evaluation is its baseline (said once), then its budget stops
    the run; a second `--resume auto` with stop still on stops again at the next breach."""
    out = tmp_path / "run"
    base = dict(training__eval_every=2, checkpointing__save_every=2)
    _script(monkeypatch, {"zh": [2.0, 1.9]})
    _train(run_config(out, env["model"], [str(env["zh"])], [f"zh={env['zh']}"], training__max_steps=2, **base))
    capfd.readouterr()
    both = [f"zh={env['zh']}", f"en={env['en']}"]
    stop = dict(base, eval__budget={"en": 0.05}, eval__on_budget="stop", checkpointing__resume="auto")
    calls = _script(monkeypatch, {"zh": [1.8, 1.7], "en": [1.0, 1.2]})
    s = _train(run_config(out, env["model"], [str(env["zh"])], both, training__max_steps=8, **stop))
    assert calls == {"zh": 2, "en": 2} and s["steps"] == 6 and s["ledger"]["stopped"]["step"] == 6
    err = capfd.readouterr().err
    assert err.count("its evaluation at step 4 is taken as its baseline") == 1
    assert "baseline 1.0000 (step 4), beyond its budget 0.05 at step 6" in err
    en = next(r for r in s["ledger"]["sets"] if r["set"] == "en")
    assert en["baseline"] == pytest.approx(1.0) and en["baseline_step"] == 4 and en["within_budget"] is False
    assert s["ledger"]["late_baselines"] == {"en": 4} and s["ledger"]["baseline"]["zh"]["bpb"] == pytest.approx(2.0)
    # resumed again with stop: the saved late baseline holds, the next breach stops at step 8
    _script(monkeypatch, {"zh": [1.6], "en": [1.3]})
    s = _train(run_config(out, env["model"], [str(env["zh"])], both, training__max_steps=8, **stop))
    assert s["steps"] == 8 and s["ledger"]["stopped"]["step"] == 8
    err = capfd.readouterr().err
    assert "taken as its baseline" not in err and "+0.3000 over its baseline 1.0000 (step 4)" in err
