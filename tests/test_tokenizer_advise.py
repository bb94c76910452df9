"""cpt tokenizer advise on the bundled Chinese law text, for a byte-level BPE base
(SmolLM2) and a SentencePiece base (Mistral v1), English Python docs retained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cptcore.assets import bundled
from cptcore.errors import CptError
from cptcore.testing import make_tiny_llama
from cptcore.tokenizer.advise import advise, derive_pieces, knee, parse_named, parse_sizes

DATA = Path(__file__).resolve().parent / "data"
SIZES = [2000, 3000, 4000]


@pytest.fixture(scope="module")
def corpora():
    return [("law", bundled("zh_law_train.jsonl"))], [("en", DATA / "en_python_docs_sample.jsonl")]


def _check_monotone_and_retained(report):
    rows = report["sizes"]
    assert [r["size"] for r in rows] == SIZES
    tpc = [report["base_tokens_per_char"]] + [r["tokens_per_char"] for r in rows]
    assert all(a > b for a, b in zip(tpc, tpc[1:])), tpc  # compression improves with size
    bpt = [report["corpora"]["law"]["base_bytes_per_token"]] + [r["corpora"]["law"]["bytes_per_token"] for r in rows]
    assert all(a < b for a, b in zip(bpt, bpt[1:])), bpt
    added = [r["added"] for r in rows]
    assert all(a < b for a, b in zip(added, added[1:]))
    base_en = report["retain"]["en"]["base_tokens"]
    for r in rows:  # retained English tokenized exactly as before, every document
        assert r["retain"]["en"] == {"tokens": base_en, "delta": 0, "changed_docs": 0, "docs": 32}


def test_bpe_base_compression_monotone_english_unchanged(tmp_path, corpora, smollm2_tokenizer_dir):
    from cptcore.tokenizer.advise_report import plot_advise

    corpus, retain = corpora
    model = make_tiny_llama(tmp_path / "m", smollm2_tokenizer_dir, tie_word_embeddings=False)
    report = advise(smollm2_tokenizer_dir, corpus, retain, SIZES, model=model)
    assert report["method"] == "bpe" and report["vocab_before"] == 49152
    _check_monotone_and_retained(report)
    law = report["corpora"]["law"]
    assert law["docs_measured"] == 7 and law["base_tokens_per_char"] == pytest.approx(1.8, abs=0.1)
    for r in report["sizes"]:
        assert r["vocab"] == 49152 + r["added"] and r["new_rows"] == r["added"]
        assert r["added"] >= r["pieces_added"]  # intermediate BPE tokens count as added
        assert r["added_params"] == r["new_rows"] * 64 * 2  # hidden 64, untied: input + output
        assert r["added_weight_bytes"] == r["added_params"] * 4 and r["added_train_bytes"] == r["added_params"] * 16
        assert 0 < r["cost_vs_base"] < 1  # fewer tokens per byte outweigh the wider lm_head
    k = report["knee"]
    assert k["size"] in SIZES and "1,000 added tokens" in k["rule"] and len(k["gains"]) == 3
    png = plot_advise(report, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sentencepiece_base_compression_monotone_english_unchanged(corpora, mistral_sp_model):
    corpus, retain = corpora
    report = advise(mistral_sp_model, corpus, retain, SIZES)
    assert report["method"] == "sentencepiece" and report["vocab_before"] == 32000
    _check_monotone_and_retained(report)
    assert report["model"] is None and "added_params" not in report["sizes"][0]
    for r in report["sizes"]:
        assert r["added"] == r["pieces_added"] and r["vocab"] == 32000 + r["added"]


def test_smaller_sizes_are_derived_exactly(tmp_path):
    """The derivation rule: a size-2000 model cut from a 3000 one has exactly the
    pieces of a model trained at 2000."""
    from cptcore.tokenizer.sources import read_candidates
    from cptcore.tokenizer.train import TrainOptions, train_sentencepiece

    big, _ = train_sentencepiece([bundled("zh_law_train.jsonl")], tmp_path / "big", TrainOptions(vocab_size=3000))
    small, _ = train_sentencepiece([bundled("zh_law_train.jsonl")], tmp_path / "small", TrainOptions(vocab_size=2000))
    assert derive_pieces(big, 2000) == [c.piece for c in read_candidates(small)]
    assert derive_pieces(big, 3000) == [c.piece for c in read_candidates(big)]
    assert derive_pieces(big, 1000) is None  # fewer than meta + character pieces
    with pytest.raises(CptError, match="larger than the trained model"):
        derive_pieces(big, 4000)


def test_knee_rule():
    rows = [{"size": s, "added": a, "tokens_per_char": t} for s, a, t in ((1000, 1000, 0.8), (2000, 2000, 0.7), (4000, 4000, 0.69))]
    k = knee(rows, 1.0, 0.01)
    # 1.0 -> 0.8: 20 %/1k; 0.8 -> 0.7: 12.5 %/1k; 0.7 -> 0.69: 0.71 %/1k < 1 %
    assert k["size"] == 2000 and k["gains"] == [0.2, 0.125, 0.00714] and k["note"] == ""
    assert knee(rows, 1.0, 0.5)["size"] is None and "not worth it" in knee(rows, 1.0, 0.5)["note"]
    assert knee(rows, 1.0, 0.001)["size"] == 4000 and "larger" in knee(rows, 1.0, 0.001)["note"]


def test_parse_errors():
    assert parse_named(["a=x.jsonl"], "--corpus") == [("a", Path("x.jsonl"))]
    with pytest.raises(CptError, match="--corpus expects NAME=FILE, got 'x.jsonl'"):
        parse_named(["x.jsonl"], "--corpus")
    with pytest.raises(CptError, match="given twice"):
        parse_named(["a=x", "a=y"], "--retain")
    assert parse_sizes("4000,1000,1000") == [1000, 4000]
    with pytest.raises(CptError, match="comma-separated integers"):
        parse_sizes("1k")


def test_advise_cli_json_and_png(cpt_cli, tmp_path, smollm2_tokenizer_dir):
    code, out = cpt_cli(
        "tokenizer", "advise", "--base", str(smollm2_tokenizer_dir),
        "--corpus", f"law={bundled('zh_law_train.jsonl')}", "--retain", f"en={DATA / 'en_python_docs_sample.jsonl'}",
        "--sizes", "1000,2000", "--json", str(tmp_path / "a.json"),
    )
    assert code == 0, out
    report = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert report["sizes"][0] == {"size": 1000, "too_small": True}  # below the corpus's character pieces
    assert report["sizes"][1]["size"] == 2000 and (tmp_path / "a.png").is_file()
    assert "rule:" in out and "too small" in out
    code, out = cpt_cli("tokenizer", "advise", "--base", str(smollm2_tokenizer_dir), "--corpus", "law")
    assert code == 1 and "--corpus expects NAME=FILE, got 'law'" in out


def test_advise_bad_inputs_one_line_before_the_work(cpt_cli, tmp_path, smollm2_tokenizer_dir):
    """--json into a missing folder is created up front (it was a matplotlib traceback
    after the whole run); a file in the way, an empty plain-text corpus (was a
    ZeroDivisionError) and a corpus of lines all too long to train on (the message named
    a temporary file and said "empty") are one-line errors naming the user's file."""
    base = ["tokenizer", "advise", "--base", str(smollm2_tokenizer_dir), "--sizes", "2000"]
    law = f"law={bundled('zh_law_train.jsonl')}"
    code, out = cpt_cli(*base, "--corpus", law, "--json", str(tmp_path / "new" / "sub" / "a.json"))
    assert code == 0, out
    assert (tmp_path / "new" / "sub" / "a.json").is_file() and (tmp_path / "new" / "sub" / "a.png").is_file()
    report = json.loads((tmp_path / "new" / "sub" / "a.json").read_text(encoding="utf-8"))
    assert report["train_lines"] > 0 and report["train_lines_skipped_too_long"] == 0
    (tmp_path / "afile").write_text("x")
    code, out = cpt_cli(*base, "--corpus", law, "--json", str(tmp_path / "afile" / "a.json"))
    assert code == 1 and f"error: --json {tmp_path / 'afile' / 'a.json'}: {tmp_path / 'afile'} is a file, not a folder" in out
    assert "Traceback" not in out
    (tmp_path / "empty.txt").write_text("  \n")
    code, out = cpt_cli(*base, "--corpus", law, "--corpus", f"e={tmp_path / 'empty.txt'}")
    assert code == 1 and f"error: {tmp_path / 'empty.txt'}: no text in this file" in out
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({"text": "中华人民共和国" * 1000}) + "\n", encoding="utf-8")
    code, out = cpt_cli(*base, "--corpus", f"h={huge}", "--max-sentence-length", "1000")
    assert code == 1 and "error: no text to train on (1 lines longer than --max-sentence-length 1000 bytes" in out
    assert f"the training documents of {huge}" in out and "cpt_advise_" not in out
