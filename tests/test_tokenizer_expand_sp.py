"""cpt tokenizer expand on a SentencePiece base: Mistral v1 + a Chinese model trained here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cptcore.assets import bundled
from cptcore.errors import CptError
from cptcore.tokenizer.expand import expand_tokenizer
from cptcore.tokenizer.expand_sp import merge_into_sentencepiece
from cptcore.tokenizer.sources import Candidate, load_model_proto, read_candidates
from cptcore.tokenizer.train import TrainOptions, train_sentencepiece

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def expanded(tmp_path_factory, mistral_sp_model: Path, zh_sp_model: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mistral_zh") / "tok"
    report = expand_tokenizer(mistral_sp_model, zh_sp_model, out, eval_text=bundled("zh_law_heldout.jsonl"))
    return out, report


def heldout_lines() -> list[str]:
    """Every line of the Chinese held-out sample and of the English Python docs sample."""
    lines = []
    for path in (bundled("zh_law_heldout.jsonl"), DATA / "en_python_docs_sample.jsonl"):
        for row in path.open(encoding="utf-8"):
            lines.extend(json.loads(row)["text"].split("\n"))
    return lines


def test_original_pieces_unchanged_and_new_scores_below_minimum(expanded, mistral_sp_model: Path) -> None:
    out, report = expanded
    base = load_model_proto(mistral_sp_model)
    new = load_model_proto(out / "tokenizer.model")
    assert report["vocab_before"] == 32000 and report["vocab_after"] == len(new.pieces) == 32000 + report["added"]
    assert report["added"] > 1500
    for old_p, new_p in zip(base.pieces, new.pieces):
        assert (old_p.piece, old_p.score, old_p.type) == (new_p.piece, new_p.score, new_p.type)
    added_scores = [p.score for p in new.pieces[32000:]]
    assert max(added_scores) < min(p.score for p in base.pieces)
    assert all(a > b for a, b in zip(added_scores, added_scores[1:]))  # strictly decreasing, source order
    assert report["skipped"]["present"] > 0
    assert report["added"] + report["skipped"]["present"] == 3000 - 3  # every NORMAL piece of the zh model


def test_english_ids_unchanged(expanded, mistral_sp_model: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out, _ = expanded
    base = spm.SentencePieceProcessor(model_file=str(mistral_sp_model))
    fast = AutoTokenizer.from_pretrained(out)
    english = [json.loads(r)["text"] for r in (DATA / "en_python_docs_sample.jsonl").open(encoding="utf-8")]
    assert fast(english, add_special_tokens=False)["input_ids"] == base.encode(english)


def test_sentencepiece_and_fast_tokenizer_agree_on_every_heldout_line(expanded) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out, _ = expanded
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    fast = AutoTokenizer.from_pretrained(out)
    assert type(fast).__name__ == "LlamaTokenizerFast" and len(fast) == sp.get_piece_size()
    lines = heldout_lines()
    assert len(lines) > 7000
    want = sp.encode(lines)
    got = fast(lines, add_special_tokens=False)["input_ids"]
    bad = [line for line, a, b in zip(lines, want, got) if a != b]
    assert bad == []
    slow = AutoTokenizer.from_pretrained(out, use_fast=False)
    assert type(slow).__name__ == "LlamaTokenizer"
    assert [slow.encode(line, add_special_tokens=False) for line in lines[:300]] == want[:300]
    assert fast("中华人民共和国").input_ids[0] == sp.bos_id()  # BOS policy of the base kept


def test_score_zero_recipe_disagrees(tmp_path: Path, mistral_sp_model: Path, zh_sp_model: Path) -> None:
    """Why new scores go below the minimum: with score 0 the converted fast tokenizer
    and sentencepiece disagree (measured here, on the same held-out lines)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    from transformers import AutoTokenizer, LlamaTokenizer

    merged, _ = merge_into_sentencepiece(mistral_sp_model, read_candidates(zh_sp_model))
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(merged)
    for p in proto.pieces[32000:]:
        p.score = 0.0
    (tmp_path / "zero.model").write_bytes(proto.SerializeToString())
    LlamaTokenizer(vocab_file=str(tmp_path / "zero.model"), legacy=True).save_pretrained(tmp_path / "zero")
    fast = AutoTokenizer.from_pretrained(tmp_path / "zero")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "zero.model"))
    lines = heldout_lines()
    got = fast(lines, add_special_tokens=False)["input_ids"]
    assert sum(a != b for a, b in zip(sp.encode(lines), got)) > 0


def test_tokens_per_cjk_char_falls(expanded) -> None:
    out, report = expanded
    before, after = report["eval"]["before"], report["eval"]["after"]
    assert before["chars"] == after["chars"] == 48769
    assert before["tokens_per_cjk_char"] == pytest.approx(1.196, abs=0.01)
    assert after["tokens_per_cjk_char"] < 0.75 * before["tokens_per_cjk_char"]
    assert after["tokens_per_char"] < before["tokens_per_char"]
    assert report["fast_vs_sentencepiece_disagreements"] == 0 and report["eval_lines"] == 987
    assert json.loads((out / "expand_report.json").read_text(encoding="utf-8")) == json.loads(json.dumps(report))


def test_skip_reasons_and_space_mapping(tmp_path: Path, mistral_sp_model: Path) -> None:
    src = tmp_path / "add.txt"
    # new, duplicate, present ("▁the"), special, empty, new with a space -> "▁量子"
    src.write_text("量子力学\n量子力学\n the\n</s>\n\n 量子\n", encoding="utf-8")
    report = expand_tokenizer(mistral_sp_model, src, tmp_path / "out")
    assert report["added"] == 2 and report["first_added"] == ["量子力学", "\u2581量子"]
    assert report["skipped"] == {"empty": 1, "special": 1, "duplicate": 1, "present": 1, "over_target": 0}
    sp_proto = load_model_proto(tmp_path / "out" / "tokenizer.model")
    assert [p.piece for p in sp_proto.pieces[32000:]] == ["量子力学", "\u2581量子"]


def test_target_vocab(tmp_path: Path, mistral_sp_model: Path, zh_sp_model: Path) -> None:
    report = expand_tokenizer(mistral_sp_model, zh_sp_model, tmp_path / "capped", target_vocab=32100)
    assert report["vocab_after"] == 32100 and report["added"] == 100
    assert report["skipped"]["over_target"] == 3000 - 3 - 100 - report["skipped"]["present"]
    with pytest.raises(CptError, match="^target vocabulary 31999 is smaller than the base vocabulary 32000$"):
        expand_tokenizer(mistral_sp_model, zh_sp_model, tmp_path / "small", target_vocab=31999)


def test_bad_bases_and_outputs(tmp_path: Path, smollm2_tokenizer_dir: Path, zh_sp_model: Path, mistral_sp_model: Path) -> None:
    with pytest.raises(CptError, match="is not SentencePiece \\(no tokenizer.model\\)"):
        expand_tokenizer(smollm2_tokenizer_dir, zh_sp_model, tmp_path / "a", method="sentencepiece")
    not_sp = tmp_path / "fake.model"
    not_sp.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CptError, match="fake.model: not a SentencePiece model"):
        expand_tokenizer(not_sp, zh_sp_model, tmp_path / "b")
    unigram, _ = train_sentencepiece(
        [bundled("zh_law_train.jsonl")], tmp_path / "uni", TrainOptions(vocab_size=2000, model_type="char")
    )
    with pytest.raises(CptError, match="supports SentencePiece BPE models, this one is CHAR"):
        expand_tokenizer(unigram, zh_sp_model, tmp_path / "c")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(CptError, match="busy exists and is not empty \\(pass --overwrite"):
        expand_tokenizer(mistral_sp_model, zh_sp_model, tmp_path / "busy")
    expand_tokenizer(mistral_sp_model, zh_sp_model, tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "keep.txt").is_file() and (tmp_path / "busy" / "tokenizer.json").is_file()


def test_expand_cli(cpt_cli, tmp_path: Path, mistral_sp_model: Path, zh_sp_model: Path) -> None:
    code, out = cpt_cli(
        "tokenizer", "expand", "--base", str(mistral_sp_model), "--add", str(zh_sp_model), "--out", str(tmp_path / "o"),
        "--eval-text", str(bundled("zh_law_heldout.jsonl")),
    )
    assert code == 0, out
    assert "vocabulary before" in out and "32000" in out and "tokens_per_cjk_char" in out
    # a base folder saved with legacy=False: the report shows the known leading-space gap
    from transformers import AutoTokenizer, LlamaTokenizer

    non_legacy = tmp_path / "non_legacy"
    LlamaTokenizer(vocab_file=str(mistral_sp_model), legacy=False).save_pretrained(non_legacy)
    AutoTokenizer.from_pretrained(non_legacy).save_pretrained(non_legacy)
    code, out = cpt_cli(
        "tokenizer", "expand", "--base", str(non_legacy), "--add", str(zh_sp_model), "--out", str(tmp_path / "l"),
        "--eval-text", str(DATA / "en_python_docs_sample.jsonl"),
    )
    report = json.loads((tmp_path / "l" / "expand_report.json").read_text(encoding="utf-8"))
    assert code == 0 and report["fast_vs_sentencepiece_disagreements"] > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"piece": "a"}\n{"piece": null}\n', encoding="utf-8")
    code, out = cpt_cli("tokenizer", "expand", "--base", str(mistral_sp_model), "--add", str(bad), "--out", str(tmp_path / "p"))
    assert code == 1
    assert out.splitlines()[0] == f'error: {bad}:2: "piece" must be a string, got NoneType'
