"""A corpus of any size from the bundled law text, for memory tests and benchmarks:
every document is 12 lines drawn (seeded) from the 9,000+ lines of the bundled laws,
so documents are distinct (few exact or near duplicates) and real-looking."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..assets import bundled


def synthetic_corpus(path: str | Path, target_bytes: int, seed: int = 0, lines_per_doc: int = 12) -> int:
    """Write JSONL ``{"text"}`` documents to ``path`` until it holds ``target_bytes``;
    returns the number of documents. Same arguments, same bytes."""
    pool = [ln for rec in bundled("zh_law_train.jsonl").read_text(encoding="utf-8").splitlines() for ln in json.loads(rec)["text"].split("\n") if len(ln) >= 10]
    rng = random.Random(seed)
    n = size = 0
    with open(path, "w", encoding="utf-8") as fh:
        while size < target_bytes:
            line = json.dumps({"text": "\n".join(rng.choices(pool, k=lines_per_doc))}, ensure_ascii=False) + "\n"
            fh.write(line)
            size += len(line.encode("utf-8"))
            n += 1
    return n
