"""cpt tokenizer expand on a byte-level BPE base (SmolLM2's tokenizer): vocab + merges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cptcore.assets import bundled
from cptcore.errors import CptError
from cptcore.tokenizer.expand import expand_tokenizer

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def expanded(tmp_path_factory, smollm2_tokenizer_dir: Path, zh_sp_model: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("smol_zh") / "tok"
    return out, expand_tokenizer(smollm2_tokenizer_dir, zh_sp_model, out, eval_text=bundled("zh_law_heldout.jsonl"))


def test_folder_and_original_vocab_kept(expanded, smollm2_tokenizer_dir: Path) -> None:
    out, report = expanded
    assert report["method"] == "bpe" and report["unreachable"] == []
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"} <= {
        p.name for p in out.iterdir()
    }
    base = json.loads((smollm2_tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    new = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert new["added_tokens"] == base["added_tokens"]
    assert new["model"]["merges"][: len(base["model"]["merges"])] == base["model"]["merges"]
    assert len(new["model"]["merges"]) == len(base["model"]["merges"]) + report["merges_added"]
    for token, i in base["model"]["vocab"].items():
        assert new["model"]["vocab"][token] == i
    assert sorted(new["model"]["vocab"].values()) == list(range(report["vocab_after"]))
    assert report["vocab_after"] == 49152 + report["added"] + report["intermediate"]


def test_english_ids_unchanged_and_new_tokens_used(expanded, smollm2_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    out, _ = expanded
    old, new = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir), AutoTokenizer.from_pretrained(out)
    english = [json.loads(r)["text"] for r in (DATA / "en_python_docs_sample.jsonl").open(encoding="utf-8")]
    assert new(english)["input_ids"] == old(english)["input_ids"]
    assert new("Hello world").input_ids == [19556, 905] and new.eos_token == "<|im_end|>"
    # the vocab+merges choice: new tokens come out of ordinary BPE on ordinary text
    ids = new("中华人民共和国建筑法").input_ids
    assert len(old("中华人民共和国建筑法").input_ids) == 17
    assert [new.decode([i]) for i in ids] == ["中华人民共和国", "建筑", "法"] and ids[0] >= 49152 and ids[1] >= 49152
    zh = [json.loads(r)["text"] for r in bundled("zh_law_heldout.jsonl").open(encoding="utf-8")]
    assert new.batch_decode(new(zh)["input_ids"]) == zh  # lossless round trip
    # slow files written by save_pretrained agree on text without digits (the slow GPT-2
    # tokenizer has no digit-splitting pre-tokenizer, upstream SmolLM2 behaves the same)
    slow = AutoTokenizer.from_pretrained(out, use_fast=False)
    assert slow("中华人民共和国建筑法").input_ids == ids


def test_tokens_per_char_falls(expanded) -> None:
    _, report = expanded
    before, after = report["eval"]["before"], report["eval"]["after"]
    assert before["tokens_per_cjk_char"] == pytest.approx(1.906, abs=0.01)
    assert after["tokens_per_cjk_char"] < 0.5 * before["tokens_per_cjk_char"]


def test_every_added_token_is_one_id_and_pretokenizer_splits_skipped(tmp_path: Path, smollm2_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    src = tmp_path / "add.jsonl"
    pieces = ["民法典", "民法", "第1条", "法,律", " 合同", "<|im_end|>", "hello", "民法典"]
    src.write_text("".join(json.dumps({"piece": p}, ensure_ascii=False) + "\n" for p in pieces), encoding="utf-8")
    report = expand_tokenizer(smollm2_tokenizer_dir, src, tmp_path / "o")
    assert report["skipped"] == {
        "empty": 0, "special": 1, "duplicate": 1, "present": 1, "over_target": 0, "pretokenizer_split": 2
    }
    assert report["first_added"] == ["民法", "民法典", "\u2581合同"]  # shortest first, then source order
    tok = AutoTokenizer.from_pretrained(tmp_path / "o")
    for text in ("民法", " 合同", "民法典"):
        assert len(tok(text).input_ids) == 1 and tok.decode(tok(text).input_ids) == text


def test_target_vocab_and_bad_base(tmp_path: Path, smollm2_tokenizer_dir: Path, zh_sp_model: Path, mistral_tokenizer_dir: Path) -> None:
    report = expand_tokenizer(smollm2_tokenizer_dir, zh_sp_model, tmp_path / "cap", target_vocab=49300)
    assert report["vocab_after"] <= 49300 and report["skipped"]["over_target"] > 0
    with pytest.raises(CptError, match="^target vocabulary 100 is smaller than the base vocabulary 49152$"):
        expand_tokenizer(smollm2_tokenizer_dir, zh_sp_model, tmp_path / "x", target_vocab=100)
    with pytest.raises(CptError, match="is not a byte-level BPE tokenizer"):
        expand_tokenizer(mistral_tokenizer_dir, zh_sp_model, tmp_path / "y", method="bpe")
