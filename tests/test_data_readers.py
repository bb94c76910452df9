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
    (tmp_path / "csv_only").mkdir()
    (tmp_path / "csv_only" / "notes.csv").write_text("a,b\n")
    (err,) = [r.error for r in iter_input(InputSpec(str(tmp_path / "csv_only")))]
    assert err.startswith("no input file in folder (reads .jsonl .ndjson .json .parquet .txt")


def test_gzip_and_byte_order_mark(tmp_path):
    import gzip

    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as fh:
        fh.write(b'\xef\xbb\xbf{"text": "one"}\n{"text": "two"}\n')
    recs = list(iter_input(InputSpec(str(tmp_path / "a.jsonl.gz"))))
    assert [(r.line, r.text, r.error) for r in recs] == [(1, "one", None), (2, "two", None)]


def test_fault_corrupt_gz_and_parquet_are_one_record_error_not_a_traceback(tmp_path):
    """Was: a truncated .gz raised EOFError (click turned it into a bare 'Abort'), a file
    that is not gzip raised BadGzipFile, a corrupt Parquet page raised OSError."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cptcore.data.readers import iter_file

    lines = b"".join(json.dumps({"text": f"doc {i} " * 40}).encode() + b"\n" for i in range(200))
    packed = gzip.compress(lines)
    (tmp_path / "t.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "fake.jsonl.gz").write_bytes(b"not gzip\n")
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(b"hello world")[:15])
    for name, line in (("t.jsonl.gz", None), ("fake.jsonl.gz", 1), ("t.txt.gz", 1)):
        recs = list(iter_file(str(tmp_path / name)))
        assert recs[-1].error.startswith("unreadable gzip ("), name
        assert all(r.error is None for r in recs[:-1])
        assert recs[-1].line == (line or len(recs))  # the line after the last good record
    pq.write_table(pa.table({"text": [f"doc {i} " * 50 for i in range(3000)]}), tmp_path / "p.parquet", row_group_size=1000)
    blob = bytearray((tmp_path / "p.parquet").read_bytes())
    off = pq.ParquetFile(tmp_path / "p.parquet").metadata.row_group(1).column(0).data_page_offset
    blob[off + 10 : off + 200] = bytes(190)
    (tmp_path / "c.parquet").write_bytes(bytes(blob))
    recs = list(iter_file(str(tmp_path / "c.parquet")))
    assert recs[-1].error.startswith("unreadable Parquet (") and all(r.error is None for r in recs[:-1])
