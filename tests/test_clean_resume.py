"""``cpt clean`` restarts and deduplication order: a dedup filter compares a document
only with the documents the run kept (not with those a later filter removed), so a
resumed run, which replays the kept documents' signatures, ends with the same bytes as
an uninterrupted one; the run never reads its own output folder as input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from clean_support import law_chunks


def _edit(text: str, seed: int, n: int = 3) -> str:
    rng = random.Random(seed)
    chars = list(text)
    for pos in rng.sample([i for i, c in enumerate(chars) if c != "\n"], n):
        chars[pos] = "的"
    return "".join(chars)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _corpus(path: Path) -> list[dict]:
    """a: a law document; b: a with ASCII commas (same normalised text: an exact and a
    near duplicate of a); d: b with 3 characters edited (a near duplicate of a and b);
    n: a with 3 characters edited (a near duplicate of a); c: n again (an exact
    duplicate of n, a near one of a); f: fillers."""
    a, *fillers = [t for t in law_chunks() if len(t) >= 700][:6]
    b = a.replace("，", ",")
    n = _edit(a, 1)
    docs = [("a", a), ("f0", fillers[0]), ("b", b), ("f1", fillers[1]), ("d", _edit(b, 2)), ("f2", fillers[2]),
            ("n", n), ("f3", fillers[3]), ("c", n), ("f4", fillers[4])]
    path.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in docs), encoding="utf-8")
    return [{"id": i, "text": t} for i, t in docs]


# killed after shard kill_at - 1: between n and c (exact, near) / between b and d (near, exact)
@pytest.mark.parametrize("filters,kill_at", [(("exact", "near"), 8), (("near", "exact"), 4)], ids=["exact-near", "near-exact"])
def test_dedup_compares_with_kept_documents_and_a_resumed_run_ends_the_same(tmp_path, cpt_pm, filters, kill_at):
    import gzip

    from cptcore.clean.pipeline import CleanArgs, clean

    _corpus(tmp_path / "c.jsonl")
    args = lambda out: CleanArgs(inputs=(str(tmp_path / "c.jsonl"),), out=str(out), filters=filters, shard_docs=1)  # noqa: E731
    ref = clean(cpt_pm, args(tmp_path / "ref"))
    removed = {json.loads(line)["source"].rsplit(":", 1)[1]: json.loads(line)
               for p in sorted((tmp_path / "ref" / "removed").iterdir()) for line in gzip.open(p, "rt", encoding="utf-8")}
    # b (line 3): the same normalised text as a: removed by the first dedup filter
    b = removed.pop("3")
    assert (b["reason"], b["detail"]) == (("exact", "same normalised text (as document #0)") if filters[0] == "exact"
                                          else ("near", "near duplicate (of document #0)"))
    # d (line 5), an edit of b, and n (line 7), an edit of a: near duplicates of a (kept), never of b
    assert removed.pop("5")["detail"] == removed.pop("7")["detail"] == "near duplicate (of document #0)"
    # c (line 9) = n (removed as a near duplicate of a): exact compares it with the kept
    # documents only (not n), so it reaches near, which finds a
    c = removed.pop("9")
    assert (c["reason"], c["detail"]) == ("near", "near duplicate (of document #0)")
    assert removed == {}
    # killed before shard kill_at: its marker and later ones gone; the rerun replays the
    # earlier shards' kept signatures and redoes the rest
    out = tmp_path / "out"
    clean(cpt_pm, args(out))
    for p in (out / "state").glob("part-*.json"):
        if int(p.stem.split("-")[1]) >= kill_at:
            p.unlink()
    resumed = clean(cpt_pm, args(out))
    assert resumed["shards_resumed"] == kill_at
    strip = lambda s: {k: v for k, v in s.items() if k not in ("seconds", "shards_resumed")}  # noqa: E731
    assert strip(resumed) == strip(ref)
    for sub in ("shards", "removed"):
        assert _files(out / sub) == _files(tmp_path / "ref" / sub)


def test_an_input_folder_holding_the_output_folder_is_read_without_it(tmp_path, cpt_pm):
    """``--input raw/ --out raw/clean``: the run's own files (state/run.json is written
    before the inputs are read) are not documents, and the rerun resumes."""
    from cptcore.clean.pipeline import CleanArgs, clean

    raw = tmp_path / "raw"
    raw.mkdir()
    docs = _corpus(raw / "c.jsonl")
    args = CleanArgs(inputs=(str(raw),), out=str(raw / "clean"), filters=("exact",), shard_docs=4)
    stats = clean(cpt_pm, args)
    assert stats["documents"] == {"in": len(docs), "kept": len(docs) - 2, "removed": {"exact": 2}}
    assert stats["inputs"][0]["files"] == [str(raw / "c.jsonl")]
    again = clean(cpt_pm, args)
    assert again["shards_resumed"] == 3 and again["documents"] == stats["documents"]


def test_unreadable_state_files_are_one_line_errors(tmp_path, cpt_pm):
    from cptcore.clean.pipeline import CleanArgs, clean
    from cptcore.errors import ConfigError

    _corpus(tmp_path / "c.jsonl")
    args = CleanArgs(inputs=(str(tmp_path / "c.jsonl"),), out=str(tmp_path / "o"), filters=("exact",), shard_docs=4)
    clean(cpt_pm, args)
    marker = tmp_path / "o" / "state" / "part-00001.json"
    marker.write_text('{"shard": 1, "docum', encoding="utf-8")  # e.g. a disk that filled up
    with pytest.raises(ConfigError, match=r"part-00001.json: unreadable cpt clean state .*--overwrite"):
        clean(cpt_pm, args)
    (tmp_path / "o" / "state" / "run.json").write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"run.json: unreadable cpt clean state"):
        clean(cpt_pm, args)
    assert clean(cpt_pm, CleanArgs(**{**args.__dict__, "overwrite": True}))["documents"]["in"] == 10


def test_rules_do_not_grow_with_the_duplicated_documents(tmp_path, cpt_pm):
    """stats.json's removed_by_rule (and card.md's rule tables) count rules, not
    documents: near duplicates of 5 different documents are one rule, not 5 (plugins:
    test_clean.py::test_rules_per_filter_are_bounded_whatever_the_filter_reports)."""
    from cptcore.clean.pipeline import CleanArgs, clean

    docs = [t for t in law_chunks() if len(t) >= 700][:5]
    lines = docs + [_edit(t, 7) for t in docs] + docs  # near, then exact duplicates of each
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in lines), encoding="utf-8")
    stats = clean(cpt_pm, CleanArgs(inputs=(str(tmp_path / "c.jsonl"),), out=str(tmp_path / "o"), filters=("near", "exact")))
    assert stats["documents"]["removed"] == {"near": 10}  # near first: the exact copies are near ones too
    assert stats["removed_by_rule"] == {"near: near duplicate": 10}


def test_parquet_columns_json_cannot_hold_are_kept_as_text(tmp_path, cpt_pm):
    """Kept records are written unchanged; a Parquet timestamp, date, bytes or decimal
    column (JSON has no such type) becomes text instead of a TypeError traceback."""
    import datetime
    import decimal
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cptcore.clean.pipeline import CleanArgs, clean

    texts = [t for t in law_chunks()][:3]
    pq.write_table(pa.table({
        "text": texts, "crawled": [datetime.datetime(2024, 1, d, 12, 30) for d in (1, 2, 3)],
        "day": [datetime.date(2024, 2, d) for d in (1, 2, 3)], "raw": [b"\x00\xff", b"ab", b""],
        "price": pa.array([decimal.Decimal("1.50")] * 3, pa.decimal128(5, 2)), "n": [1, 2, 3],
    }), tmp_path / "t.parquet")
    clean(cpt_pm, CleanArgs(inputs=(str(tmp_path / "t.parquet"),), out=str(tmp_path / "o"), filters=("exact",)))
    kept = [json.loads(line) for line in gzip.open(tmp_path / "o" / "shards" / "part-00000.jsonl.gz", "rt", encoding="utf-8")]
    assert [r["text"] for r in kept] == texts and [r["n"] for r in kept] == [1, 2, 3]
    assert kept[0]["crawled"] == "2024-01-01T12:30:00" and kept[1]["day"] == "2024-02-02"
    assert [r["raw"] for r in kept] == ["AP8=", "YWI=", ""] and kept[0]["price"] == "1.50"


def test_progress_counts_the_bytes_on_disk_of_a_gz_input(tmp_path, cpt_pm, capsys):
    import gzip

    from cptcore.clean.pipeline import CleanArgs, clean

    _corpus(tmp_path / "c.jsonl")
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress((tmp_path / "c.jsonl").read_bytes()))
    clean(cpt_pm, CleanArgs(inputs=(str(gz),), out=str(tmp_path / "o"), filters=("exact",), progress=True))
    kb = gz.stat().st_size / 1000
    assert f"{kb:.1f}/{kb:.1f} kB" in capsys.readouterr().err  # was the decompressed size over the gz size


def test_a_ray_address_nothing_answers_at_fails_in_seconds_before_any_output(tmp_path, cpt_pm):
    """ray.init retried a wrong --ray-address for minutes (after the output folder was made)."""
    import socket
    import time

    from cptcore.clean.pipeline import CleanArgs, clean
    from cptcore.errors import ConfigError

    with socket.socket() as s:  # a free port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _corpus(tmp_path / "c.jsonl")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=f"--ray-address 127.0.0.1:{port}: nothing answers"):
        clean(cpt_pm, CleanArgs(inputs=(str(tmp_path / "c.jsonl"),), out=str(tmp_path / "o"), executor="ray",
                                ray_address=f"127.0.0.1:{port}"))
    assert time.monotonic() - t0 < 10 and not (tmp_path / "o").exists()


def test_an_english_evaluation_passage_inside_a_chinese_document_is_found(tmp_path):
    """A mostly-CJK document is compared on 39-character n-grams, so an English passage of
    13-38 words copied from an evaluation set into it went unseen; its runs of non-CJK
    words are now compared on 13-word n-grams too."""
    from cptcore.clean.decontam import Decontaminate, DecontaminateOptions

    passage = ("The functions in this chapter interact with Python objects regardless of their type, "
               "or with wide classes of object types such as all numerical types.")  # 25 words
    evalf = tmp_path / "en.jsonl"
    evalf.write_text(json.dumps({"question": passage, "answer": "B"}) + "\n", encoding="utf-8")
    d = Decontaminate(DecontaminateOptions(sets={"en": str(evalf)}))
    law = [t for t in law_chunks() if len(t) >= 700][0]
    assert d.check(law[:350] + "\n" + passage + "\n" + law[350:]) == "en (13 shared 13-grams)"
    assert d.check("Some context first. " + passage) == "en (13 shared 13-grams)"  # as before
    assert d.check(law) is None
    short = " ".join(passage.split()[:12])  # below 13 words: nothing to compare
    assert d.check(law[:350] + short + law[350:]) is None


@pytest.mark.parametrize("in_flight_bytes, most", [(1, 1), ("largest document + 1", 2), (256 << 20, 4)])
def test_shards_read_ahead_are_capped_by_input_bytes_and_the_output_does_not_change(tmp_path, cpt_pm, monkeypatch,
                                                                                     in_flight_bytes, most):
    """Two workers read up to 4 shards ahead; --in-flight-mb caps that by input bytes (a new
    shard is read only while less is in flight; one always is). Each shard here is one
    document (one JSONL line); a cap one byte above the longest line allows two."""
    import cptcore.clean.pipeline as pipeline

    _corpus(tmp_path / "c.jsonl")
    lines = [len(x) for x in (tmp_path / "c.jsonl").read_bytes().splitlines(keepends=True)]
    assert len(lines) == 10 and 2 * min(lines) > max(lines) + 1
    if isinstance(in_flight_bytes, str):
        in_flight_bytes = max(lines) + 1
    outstanding, peak = [0], [0]

    def counting(*a, **kw):
        real = make(*a, **kw)
        submit = real.submit

        class Future:
            def __init__(self, fut):
                self.fut = fut

            def get(self):
                outstanding[0] -= 1
                return self.fut.get()

        def counted(items):
            outstanding[0] += 1
            peak[0] = max(peak[0], outstanding[0])
            return Future(submit(items))

        real.submit = counted
        return real

    make = pipeline.make_executor
    monkeypatch.setattr(pipeline, "make_executor", counting)
    args = lambda out, **kw: pipeline.CleanArgs(inputs=(str(tmp_path / "c.jsonl"),), out=str(out), filters=("exact",),  # noqa: E731
                                               shard_docs=1, num_proc=2, **kw)
    capped = pipeline.clean(cpt_pm, args(tmp_path / "capped", in_flight_bytes=in_flight_bytes))
    assert peak[0] == most
    monkeypatch.setattr(pipeline, "make_executor", make)
    ref = pipeline.clean(cpt_pm, args(tmp_path / "ref"))
    strip = lambda s: {k: v for k, v in s.items() if k != "seconds"}  # noqa: E731
    assert strip(capped) == strip(ref)
    for sub in ("shards", "removed"):
        assert _files(tmp_path / "capped" / sub) == _files(tmp_path / "ref" / sub)
    with pytest.raises(pipeline.ConfigError, match="--in-flight-mb must be > 0"):
        pipeline.clean(cpt_pm, args(tmp_path / "zero", in_flight_bytes=0))
