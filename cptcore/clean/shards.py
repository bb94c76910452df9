"""Output and state files of ``cpt clean``: deterministic gzip JSONL shards, written
atomically, and the per-shard completion markers a restarted run resumes from."""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import numpy as np


def write_jsonl(path: Path, lines: list[str], compress: bool) -> None:
    """Write ``lines`` (JSON texts without newline) to ``path`` atomically (temporary
    file + rename). Gzip output has no time stamp or file name, so identical lines give
    identical bytes."""
    tmp = path.with_name(path.name + ".tmp")
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with open(tmp, "wb") as fh:
        if compress:
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=6) as gz:
                gz.write(data)
        else:
            fh.write(data)
    os.replace(tmp, path)


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_signatures(path: Path, keys: list[int], sigs: dict[str, list]) -> None:
    """The signatures of the documents a shard kept, per dedup filter (``.npz``, no
    pickle), with their document keys."""
    arrays = {"keys": np.asarray(keys, dtype=np.int64)}
    for name, rows in sigs.items():
        if rows:
            arrays[f"sig_{name}"] = np.stack(rows)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def read_signatures(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        keys = z["keys"]
        sigs = {k[4:]: z[k] for k in z.files if k.startswith("sig_")}
    return keys, sigs
