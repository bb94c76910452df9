"""The dedup filters' on-disk index: the same decisions as datasketch's in-memory
``MinHashLSH``, and the driver's memory does not grow with the documents (the
mechanism, counted with tracemalloc; peak RSS against input size is in
benchmarks/scale.py)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from cptcore.clean.dedup import ExactDedup, NearDedup, NearOptions
from cptcore.clean.index import SeenIndex


def _signatures(n: int, seed: int = 0) -> np.ndarray:
    """``[n, 128]`` uint32 MinHash-like rows; every 7th row copies one band (13 values)
    of an earlier row, every 11th a whole earlier row, so buckets collide."""
    rng = np.random.default_rng(seed)
    sigs = rng.integers(0, 2**32, size=(n, 128), dtype=np.uint64).astype(np.uint32)
    for i in range(1, n):
        j = int(rng.integers(0, i))
        if i % 11 == 0:
            sigs[i] = sigs[j]
        elif i % 7 == 0:
            band = int(rng.integers(0, 9))
            sigs[i, band * 13 : band * 13 + 13] = sigs[j, band * 13 : band * 13 + 13]
    return sigs


def test_near_index_decides_as_datasketch_minhashlsh(tmp_path):
    """The previous implementation (MinHashLSH query, insert the kept) and the on-disk
    index remove the same documents with the same detail."""
    import xxhash
    from datasketch import LeanMinHash, MinHashLSH

    sigs = _signatures(1500)
    lsh = MinHashLSH(threshold=0.8, num_perm=128, hashfunc=xxhash.xxh64_digest)
    want = []
    for key, sig in enumerate(sigs):
        m = LeanMinHash(seed=0, hashvalues=sig, scheme="affine32")
        hits = lsh.query(m)
        if hits:
            want.append(f"near duplicate (of document #{min(hits)})")
        else:
            lsh.insert(key, m, check_duplication=False)
            want.append(None)
    near = NearDedup(NearOptions(), seed=0, scratch=str(tmp_path))
    got = []
    for key, sig in enumerate(sigs):  # as the driver does: check, add the kept
        got.append(near.check(sig, key))
        if got[-1] is None:
            near.add(sig, key)
    near.close()
    assert got == want
    assert 150 < sum(w is not None for w in want) < 500  # the planted collisions, no more
    assert not list(tmp_path.iterdir())  # close() deleted the scratch file


def test_near_compares_the_normalised_text(tmp_path):
    """A copy in other case, full-width punctuation and spacing, with two words changed, is
    a near duplicate (its raw words share no 5-gram with the original's)."""
    import json
    from pathlib import Path

    rows = [json.loads(x)["text"] for x in (Path(__file__).parent / "data" / "en_python_docs_sample.jsonl").read_text(encoding="utf-8").splitlines()]
    original = next(t for t in rows if 120 <= len(t.split()) <= 400 and "," in t)
    ws = original.split()
    ws[len(ws) // 3], ws[2 * len(ws) // 3] = "changed", "words"
    variant = "  ".join(ws).upper().replace(",", "\uff0c")  # full-width comma, NFKC maps it back
    other = next(t for t in rows if len(t.split()) > 120 and t[:40] != original[:40])
    near = NearDedup(NearOptions(), seed=0, scratch=str(tmp_path))
    assert near.check(near.signature(original), 0) is None
    near.add(near.signature(original), 0)
    assert near.check(near.signature(other), 1) is None
    assert near.check(near.signature(variant), 2) == "near duplicate (of document #0)"
    near.close()


@pytest.mark.parametrize("make", [lambda d: NearDedup(NearOptions(), 0, str(d)), lambda d: ExactDedup(str(d))], ids=["near", "exact"])
def test_index_memory_does_not_grow_with_documents(tmp_path, make):
    """Python memory held after 1,000 and after 6,000 kept documents: equal within 64 kB
    (the in-memory LSH held ~2.8 kB per document: 14 MB for the 5,000 more); the keys
    are in the SQLite file, whose page cache is capped by PRAGMA cache_size."""
    f = make(tmp_path)
    sigs = _signatures(6000, seed=1)
    if isinstance(f, ExactDedup):
        sigs = sigs[:, :4].copy().view(np.uint64)  # [n, 2] BLAKE2b-128-like rows
    tracemalloc.start()
    try:
        held = []
        for stop in (1000, 6000):
            for key in range(len(held) and 1000, stop):
                f.add(sigs[key], key)
            held.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    index = f.index()
    assert held[1] - held[0] < 64 << 10, held
    keys = {k for sig in sigs for k in f.keys(sig)}
    assert len(index) == len(keys) > 5000
    assert index.disk_bytes() > 10 * len(keys)  # the keys live in the file
    assert index._db.execute("PRAGMA cache_size").fetchone()[0] == -16 * 1024
    f.close()
    assert not list(tmp_path.iterdir())


def test_seen_index_keeps_the_first_document_and_replaces_a_stale_file(tmp_path):
    path = tmp_path / "i.sqlite"
    path.write_bytes(b"left by a killed run")
    idx = SeenIndex(path, cache_mb=1)
    assert idx.first([b"a", b"b"]) is None
    idx.add([b"a", b"b"], 5)
    idx.add([b"b", b"c"], 2)  # b stays with 5
    assert (idx.first([b"b"]), idx.first([b"c", b"x"]), idx.first([b"a", b"c"]), idx.first([b"x"])) == (5, 2, 2, None)
    idx.close()
    assert not path.exists()
