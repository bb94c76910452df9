"""cpt tokenizer train and the token sources of cpt tokenizer expand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cptcore.assets import bundled
from cptcore.errors import CptError, DataError
from cptcore.tokenizer.sources import Candidate, read_candidates
from cptcore.tokenizer.train import TrainOptions, train_sentencepiece


def test_train_chinese_bpe_model(tmp_path: Path) -> None:
    import sentencepiece as spm

    model, stats = train_sentencepiece([bundled("zh_law_train.jsonl")], tmp_path / "zh", TrainOptions(vocab_size=2000))
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.get_piece_size() == 2000
    assert stats.sentences == 9388 and stats.skipped_too_long == 0
    assert "人民政府" in {sp.id_to_piece(i) for i in range(2000)}
    report = json.loads((tmp_path / "zh" / "train_report.json").read_text())
    assert report["options"]["vocab_size"] == 2000 and report["stats"]["sentences"] == 9388
    # same seed, same data -> same model bytes
    again, _ = train_sentencepiece([bundled("zh_law_train.jsonl")], tmp_path / "zh2", TrainOptions(vocab_size=2000))
    assert again.read_bytes() == model.read_bytes()


def test_train_sampling_and_long_lines(tmp_path: Path) -> None:
    import sentencepiece as spm

    text = tmp_path / "corpus.txt"
    lines = [json.loads(l)["text"].split("\n") for l in bundled("zh_law_train.jsonl").open(encoding="utf-8")]
    flat = [s for doc in lines for s in doc if s.strip()][:3000]
    text.write_text("\n".join(flat + ["长" * 300]) + "\n", encoding="utf-8")
    opts = TrainOptions(vocab_size=500, input_sentence_size=200, max_sentence_length=600, byte_fallback=True)
    with pytest.raises(CptError, match="SentencePiece training failed: .*Vocabulary size is smaller than required_chars"):
        train_sentencepiece([text], tmp_path / "small", opts)
    opts = TrainOptions(vocab_size=1500, input_sentence_size=200, max_sentence_length=600, byte_fallback=True)
    model, stats = train_sentencepiece([text], tmp_path / "out", opts)
    too_long = sum(len(s.encode()) > 600 for s in flat) + 1  # + the 900-byte line
    assert too_long == 5
    assert stats.skipped_too_long == too_long
    assert stats.sentences == 3001 - too_long  # all lines streamed; SentencePiece keeps a 200-line sample
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.get_piece_size() == 1500 and sp.piece_to_id("<0xE4>") != sp.unk_id()


def test_train_bad_inputs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "好"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'text' is not a string"):
        train_sentencepiece([bad], tmp_path / "o1", TrainOptions(vocab_size=50))
    with pytest.raises(CptError, match="unknown model type 'bpee'"):
        train_sentencepiece([bad], tmp_path / "o2", TrainOptions(model_type="bpee"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(CptError, match="exists and is not empty"):
        train_sentencepiece([bundled("zh_law_train.jsonl")], tmp_path / "full", TrainOptions(vocab_size=500))


def test_train_cli(cpt_cli, tmp_path: Path) -> None:
    code, out = cpt_cli(
        "tokenizer", "train", "--input", str(bundled("zh_law_train.jsonl")), "--vocab-size", "2500",
        "--out", str(tmp_path / "t"), "--model-type", "char", "--no-shuffle", "--byte-fallback",
    )
    assert code == 0, out
    from cptcore.tokenizer.sources import load_model_proto

    spec = load_model_proto(tmp_path / "t" / "tokenizer.model").trainer_spec
    assert (spec.model_type, spec.byte_fallback, spec.shuffle_input_sentence) == (4, True, False)  # 4 = CHAR
    assert "9388 lines" in out and (tmp_path / "t" / "tokenizer.model").is_file()
    code, out = cpt_cli("tokenizer", "train", "--input", str(bundled("zh_law_train.jsonl")), "--vocab-size", "2500", "--out", str(tmp_path / "t"))
    assert code == 1 and "--overwrite" in out


def test_sources_text_jsonl_and_model(tmp_path: Path, mistral_sp_model: Path) -> None:
    txt = tmp_path / "tokens.txt"
    txt.write_bytes("中国\n 人民\r\n\n".encode())
    assert read_candidates(txt) == [
        Candidate("中国", f"{txt}:1"), Candidate("\u2581人民", f"{txt}:2"), Candidate("", f"{txt}:3")
    ]
    js = tmp_path / "pieces.jsonl"
    js.write_text('{"piece": "法律"}\n\n{"piece": "a b"}\n', encoding="utf-8")
    assert [c.piece for c in read_candidates(js)] == ["法律", "a\u2581b"]
    pieces = read_candidates(mistral_sp_model)
    assert len(pieces) == 32000 - 3 - 256  # NORMAL pieces only: no <unk>, <s>, </s>, byte pieces
    assert pieces[0] == Candidate("\u2581\u2581", f"{mistral_sp_model}#259")


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("p.jsonl", b'{"piece": "a"}\n{"piece": 1}\n', r"p\.jsonl:2: \"piece\" must be a string, got int"),
        ("p.jsonl", b'{"piece": "a"}\n{"text": "b"}\n', r"p\.jsonl:2: expected an object with a \"piece\" field"),
        ("p.jsonl", b'{"piece": "a"}\n\n{oops\n', r"p\.jsonl:3: invalid JSON"),
        ("p.txt", "好\n".encode() + b"\xff\xfe\n", r"p\.txt:2: not UTF-8 text"),
        ("p.model", b"this is not a protobuf", r"p\.model: not a SentencePiece model"),
    ],
)
def test_sources_errors_name_file_and_line(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_candidates(path)


def test_train_help_names_the_prepare_formats(cpt_cli) -> None:
    code, out = cpt_cli("tokenizer", "train", "--help")
    assert code == 0, out
    flat = " ".join(out.replace("│", " ").split())
    assert "JSONL/JSON/Parquet" in flat and ".gz" in flat and ".jsonl or plain" not in flat
