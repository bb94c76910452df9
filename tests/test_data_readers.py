"""Input specs and readers (no tokenizer)."""

import json

import pytest

from cptcore.data.readers import InputSpec, expand, iter_input, parse_input
from cptcore.errors import DataError


def test_parse_input_weights():
    assert parse_input("a.jsonl") == InputSpec("a.jsonl", None)
    assert parse_input("data/*.jsonl:0.3") == InputSpec("data/*.jsonl", 0.3)
    assert parse_input("a.jsonl:2") == InputSpec("a.jsonl", 2.0)
    assert parse_input("weird:name.jsonl") == InputSpec("weird:name.jsonl", None)
    for bad in ("a.jsonl:0", "a.jsonl:-1"):
        with pytest.raises(DataError, match="positive"):
            parse_input(bad)


def test_folder_glob_and_records(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.jsonl").write_text(json.dumps({"text": "b"}) + "\n\n" + json.dumps({"source": "s", "target": "t"}) + "\n")
    (tmp_path / "d" / "a.txt").write_text("plain")
    (tmp_path / "d" / "skip.bin").write_bytes(b"\0")
    assert [p.rsplit("/", 1)[1] for p in expand(InputSpec(str(tmp_path / "d")))] == ["a.txt", "b.jsonl"]
    recs = list(iter_input(InputSpec(str(tmp_path / "d"))))
    assert [(r.line, r.text, r.source, r.target, r.error) for r in recs] == [
        (1, "plain", None, None, None),
        (1, "b", None, None, None),
        (3, None, "s", "t", None),  # blank line 2 is not a document
    ]
    sft = list(iter_input(InputSpec(str(tmp_path / "d" / "*.txt")), None))
    assert sft[0].error.startswith("plain text is not a conversation")
    assert [r.error for r in iter_input(InputSpec(str(tmp_path / "nothing*")))] == ["missing file"]


def test_gzip_and_byte_order_mark(tmp_path):
    import gzip

    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as fh:
        fh.write(b'\xef\xbb\xbf{"text": "one"}\n{"text": "two"}\n')
    recs = list(iter_input(InputSpec(str(tmp_path / "a.jsonl.gz"))))
    assert [(r.line, r.text, r.error) for r in recs] == [(1, "one", None), (2, "two", None)]
