"""Bits per byte: exact on a tiny case against plain torch, prepared folder vs raw text
(`cpt eval`), sliding windows, named eval sets in `cpt train`, config parsing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cptcore.errors import ConfigError
from train_support import DATA, prepare, run_config, tiny_model

DOCS = ["Hello world, 世界 飨 and more words here.", "def f(x):\n    return x * 2  # double"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir):
    root = tmp_path_factory.mktemp("bpb_env")
    tok = smollm2_tokenizer_dir
    model_dir = tiny_model(root / "model", tok)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    return {"root": root, "tok": tok, "model_dir": model_dir, "model": model}


def _plain_torch(model, ids):
    """Sum of -log p(ids[t] | ids[:t]) for t >= 1, one document, no cptcore code."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits[0].double(), dim=-1)
    return -sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)))


def test_exact_bpb_on_a_tiny_case_against_plain_torch(env):
    from transformers import AutoTokenizer

    from cptcore.eval.text import encode_documents, score_documents

    hf = AutoTokenizer.from_pretrained(str(env["tok"]))
    ids, nbytes = encode_documents(str(env["tok"]), DOCS)
    # independently: SmolLM2 adds no BOS; cpt appends EOS (<|im_end|> = 2)
    expect_ids = [hf(t, add_special_tokens=False)["input_ids"] + [2] for t in DOCS]
    assert ids == expect_ids
    nll = sum(_plain_torch(env["model"], x) for x in expect_ids)
    tokens = sum(len(x) - 1 for x in expect_ids)
    # bytes of the scored tokens: everything but each document's first token ("Hello", "def")
    nbytes_expect = sum(len(t.encode("utf-8")) for t in DOCS) - len("Hello") - len("def")
    r = score_documents(env["model"], ids, nbytes, max_length=64)
    assert r.tokens == tokens and r.bytes == nbytes_expect
    assert r.bpb == pytest.approx(nll / math.log(2) / nbytes_expect, rel=1e-5)
    assert r.loss == pytest.approx(nll / tokens, rel=1e-5) and r.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    with pytest.raises(ConfigError, match="batch_tokens must be >= 1"):  # 0 was silently the default
        score_documents(env["model"], ids, nbytes, max_length=64, batch_tokens=0)


def test_windows_score_every_token_once():
    from cptcore.eval.text import Window, windows

    assert windows(10, 4, 2) == [Window(0, 0, 4, 1), Window(0, 2, 6, 4), Window(0, 4, 8, 6), Window(0, 6, 10, 8)]
    for n, L, S in [(1, 4, 2), (2, 4, 2), (17, 5, 1), (17, 5, 4), (100, 16, 7)]:
        targets = [t for w in windows(n, L, S) for t in range(w.first, w.end)]
        assert targets == list(range(1, n))
        assert all(w.end - w.begin <= L and w.first > w.begin for w in windows(n, L, S))
    with pytest.raises(ConfigError, match="stride"):
        windows(10, 4, 4)


def test_sliding_windows_against_plain_torch(env):
    """A 30-token document in windows of 8 with stride 3: each target's context is the
    window it is scored in."""
    from cptcore.eval.text import encode_documents, score_documents, windows

    ids, nbytes = encode_documents(str(env["tok"]), [DOCS[0] + " " + DOCS[1]])
    x = ids[0]
    assert len(x) > 8
    nll = 0.0
    for w in windows(len(x), 8, 3):
        with torch.no_grad():
            logp = torch.log_softmax(env["model"](input_ids=torch.tensor([x[w.begin:w.end]])).logits[0].double(), -1)
        nll -= sum(float(logp[t - w.begin - 1, x[t]]) for t in range(w.first, w.end))
    r = score_documents(env["model"], ids, nbytes, max_length=8, stride=3, batch_tokens=16)
    assert r.tokens == len(x) - 1 and r.nll == pytest.approx(nll, rel=1e-5)


def test_prepared_folder_and_raw_text_agree(env, tmp_path):
    """The bundled Python docs, one document per row (no document needs a window):
    evaluate_prepared on the folder == cpt eval's scoring of the raw documents."""
    from cptcore.eval.prepared import evaluate_prepared
    from cptcore.eval.text import encode_documents, read_texts, score_documents

    src = tmp_path / "docs.jsonl"
    lines = (DATA / "en_python_docs_sample.jsonl").read_text(encoding="utf-8").splitlines()[:6]
    texts = [json.loads(x)["text"][:600] for x in lines] + DOCS
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    folder = prepare(tmp_path / "prep", env["tok"], [str(src)], max_length=1024, packer=None)
    a = evaluate_prepared(env["model"], folder, micro_batch_size=3, pad_id=0)
    ids, nbytes = encode_documents(str(env["tok"]), read_texts(str(src)))
    assert max(len(x) for x in ids) <= 1024
    b = score_documents(env["model"], ids, nbytes, max_length=1024)
    assert a.tokens == b.tokens and a.bytes == b.bytes
    assert json.loads((folder / "manifest.json").read_text())["label_bytes"] == a.bytes
    assert a.bpb == pytest.approx(b.bpb, rel=1e-4) and a.loss == pytest.approx(b.loss, rel=1e-4)


def test_evaluate_prepared_without_label_bytes_gives_no_bpb(env, tmp_path):
    from datasets import load_from_disk

    from cptcore.eval.prepared import evaluate_prepared

    folder = prepare(tmp_path / "prep", env["tok"], [str(DATA / "zh_poetry_sample.jsonl")], max_length=64)
    old = load_from_disk(str(folder)).remove_columns(["label_bytes"]).select(range(4))
    r = evaluate_prepared(env["model"], old, micro_batch_size=2, pad_id=0)
    assert r.bpb is None and r.bytes is None and r.tokens > 0 and "bpb" not in r.metrics()


def test_named_eval_sets_config():
    from cptcore.config import load_config

    cfg = load_config(None, overrides={"data.eval": ["law=/d/law_heldout", "/d/web_en/"]}, sets=["eval.budget.web_en=0.05"])
    assert cfg.data.eval == {"law": "/d/law_heldout", "web_en": "/d/web_en/"}
    assert cfg.eval.budget == {"web_en": 0.05} and cfg.eval.on_budget == "warn"
    with pytest.raises(ConfigError, match=r"^--set eval.budget.web=0.05: eval.budget.web: no eval set named 'web' \(eval sets: law\)$"):
        load_config(None, overrides={"data.eval": ["law=/d/x"]}, sets=["eval.budget.web=0.05"])
    with pytest.raises(ConfigError, match="on_budget must be one of warn, stop, keep_best"):
        load_config(None, overrides={"data.eval": ["law=/d/x"]}, sets=["eval.on_budget=keepbest"])
    with pytest.raises(ConfigError, match="two eval sets named 'x'"):
        load_config(None, overrides={"data.eval": ["/a/x", "/b/x"]})
    with pytest.raises(ConfigError, match="finite number >= 0"):
        load_config(None, overrides={"data.eval": ["law=/d/x"]}, sets=["eval.budget.law=-1"])


def test_named_eval_sets_yaml_mapping(tmp_path):
    from cptcore.config import load_config, write_resolved

    y = tmp_path / "run.yaml"
    y.write_text("data:\n  eval:\n    law: /d/law\n    en: /d/en\neval:\n  budget:\n    en: 0.1\n  on_budget: stop\n")
    cfg = load_config(y)
    assert cfg.data.eval == {"law": "/d/law", "en": "/d/en"} and cfg.eval.budget == {"en": 0.1}
    again = load_config(write_resolved(cfg, tmp_path / "out"))  # the resolved config.yaml reads back
    assert again.data.eval == cfg.data.eval and again.eval == cfg.eval
    y.write_text("data:\n  eval:\n    law: /d/law\neval:\n  budget:\n    enn: 0.1\n")
    with pytest.raises(ConfigError, match=rf"^{y}: eval.budget.enn: no eval set named 'enn'"):
        load_config(y)


def test_train_logs_each_named_set(env, tmp_path):
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.loop import train

    zh = prepare(env["root"] / "zh", env["tok"], [str(DATA / "zh_poetry_sample.jsonl")], max_length=64)
    en = prepare(env["root"] / "en", env["tok"], [str(DATA / "en_python_docs_sample.jsonl")], max_length=64)
    out = tmp_path / "run"
    cfg = run_config(out, env["model_dir"], [str(zh)], [f"poetry={zh}", f"docs={en}"], training__max_steps=2,
                     training__eval_every=1, training__eval_batches=2)
    summary = train(cfg, make_plugin_manager(entrypoints=False))
    rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    for name in ("poetry", "docs"):
        assert {f"eval/{name}/{k}" for k in ("loss", "perplexity", "bpb", "tokens")} <= set(last)
        assert last[f"eval/{name}/tokens"] == 2 * 2 * 63  # 2 batches of 2 full rows of 64
    pooled = (last["eval/poetry/loss"] * last["eval/poetry/tokens"] + last["eval/docs/loss"] * last["eval/docs/tokens"]) / (
        last["eval/poetry/tokens"] + last["eval/docs/tokens"])
    assert last["eval_loss"] == pytest.approx(pooled, rel=1e-9) and last["eval_tokens"] == 4 * 126
    assert summary["final_eval"]["docs"]["bpb"] == last["eval/docs/bpb"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(out / "logs" / "tensorboard"))
    tb.Reload()
    tags = set(tb.Tags()["scalars"])
    assert {"eval/poetry/bpb", "eval/docs/bpb", "eval/eval_loss", "train/loss"} <= tags
    assert tb.Scalars("eval/docs/bpb")[-1].value == pytest.approx(last["eval/docs/bpb"], rel=1e-6)
    # the report of this real run: the ledger, its baseline the step-0 evaluation
    from cptcore.report import write_report

    rep = write_report(out)
    assert [s.name for s in rep.ledger.sets] == ["poetry", "docs"] and rep.ledger.sets[1].final == last["eval/docs/bpb"]
    assert rep.eval_png.is_file() and rep.tradeoff_png.is_file()
    assert rows[0]["step"] == 0 and rep.ledger.sets[1].baseline == rows[0]["eval/docs/bpb"]
    assert "no step-0 evaluation" not in rep.summary_md.read_text()
