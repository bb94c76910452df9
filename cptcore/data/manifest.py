"""``manifest.json`` of a prepared folder, and the tokenizer vocabulary hash.

Schema (see docs/data.md): ``format_version``, ``kind`` ("pretrain"|"sft"),
``tokenizer`` {name_or_path, vocab_hash, vocab_size, bos_id, eos_id}, ``pad_id``,
``max_length``, ``packer``, ``packer_options``, ``template`` (SFT), ``inputs`` [per input],
``documents`` {read, packed, skipped: {reason: n}}, ``tokens`` {in, out, pad, truncated},
``packs``, ``useful_token_fraction``, ``num_shards``, ``seed``, ``command``,
``cptcore_version``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import DataError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def tokenizer_vocab_hash(tokenizer: Any) -> str:
    """``"sha256:<hex>"`` of the tokenizer's full vocabulary (token -> id, added tokens
    included), sorted by id. Two tokenizers with the same hash map every token string to
    the same id; training refuses prepared data whose hash differs from the model's."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    blob = "\n".join(f"{vocab[t]}\t{t}" for t in tokens).encode("utf-8", "surrogatepass")
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared folder as a dict.

    Raises:
        DataError: no manifest.json (not a folder made by ``cpt prepare``) or bad JSON.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataError("no manifest.json: not a folder made by 'cpt prepare'", path=str(out_dir))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"unreadable manifest ({exc})", path=str(path)) from exc
