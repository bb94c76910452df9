"""A corpus of any size from the bundled law text, for memory tests and benchmarks:
every document is 12 lines drawn (seeded) from the 9,000+ lines of the bundled laws,
so documents are distinct (few exact or near duplicates) and real-looking. Planted
duplicates on request: a share of the documents repeats one of the last 1,000 documents
exactly, or with a few characters replaced (a near duplicate), so deduplication has work
at any size while the generator's memory stays bounded."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

from ..assets import bundled

RECENT = 1000  # documents a planted duplicate may copy


def _edit(text: str, rng: random.Random, n: int = 3) -> str:
    chars = list(text)
    for pos in rng.sample(range(len(chars)), min(n, len(chars))):
        if chars[pos] != "\n":
            chars[pos] = "的"
    return "".join(chars)


def synthetic_corpus(path: str | Path, target_bytes: int, seed: int = 0, lines_per_doc: int = 12,
                     exact_dups: float = 0.0, near_dups: float = 0.0) -> int:
    """Write JSONL ``{"text"}`` documents to ``path`` until it holds ``target_bytes``;
    returns the number of documents. ``exact_dups`` / ``near_dups``: share of documents
    (0-1) that copy one of the last :data:`RECENT` fresh documents, exactly or with 3
    characters replaced. Same arguments, same bytes (with both 0: the bytes of the
    generator before planted duplicates existed)."""
    pool = [ln for rec in bundled("zh_law_train.jsonl").read_text(encoding="utf-8").splitlines() for ln in json.loads(rec)["text"].split("\n") if len(ln) >= 10]
    rng = random.Random(seed)
    dup_rng = random.Random(seed + 1)
    recent: collections.deque = collections.deque(maxlen=RECENT)
    n = size = 0
    with open(path, "w", encoding="utf-8") as fh:
        while size < target_bytes:
            u = dup_rng.random() if (exact_dups or near_dups) else 1.0
            if recent and u < exact_dups:
                text = dup_rng.choice(recent)
            elif recent and u < exact_dups + near_dups:
                text = _edit(dup_rng.choice(recent), dup_rng)
            else:
                text = "\n".join(rng.choices(pool, k=lines_per_doc))
                recent.append(text)
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            fh.write(line)
            size += len(line.encode("utf-8"))
            n += 1
    return n
