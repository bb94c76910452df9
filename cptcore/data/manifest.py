"""``manifest.json`` of a prepared folder, and the tokenizer vocabulary hash.

Schema (see docs/data.md): ``format_version``, ``kind`` ("pretrain"|"sft"),
``tokenizer`` {name_or_path, vocab_hash, vocab_size, bos_id, eos_id}, ``pad_id``,
``max_length``, ``packer``, ``packer_options``, ``template`` (SFT), ``inputs`` [per input],
``documents`` {read, packed, skipped: {reason: n}, not_read}, ``bytes`` {read, not_read},
``tokens`` {in, out, pad, truncated, skipped, labels, dropped}, ``packs``,
``packs_without_labels`` (must be 0), ``packs_dropped``, ``longest_pack``,
``useful_token_fraction``, ``num_shards``, ``seed``, ``command``, ``cptcore_version``.
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


def unlabeled_rows(folder: str | Path) -> int:
    """Rows of a prepared folder's Arrow shards (``data-*.arrow``) with no trained
    label: every label -100 from position 1 on (``labels[0]`` is never predicted, the
    model shifts labels by one), counted from the ``labels`` column (memory-mapped,
    pyarrow only; for folders whose manifest predates ``packs_without_labels``).

    Raises:
        DataError: a shard that is not an Arrow stream with a ``labels`` column.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = 0
    for shard in sorted(Path(folder).rglob("data-*.arrow")):
        try:
            with pa.memory_map(str(shard)) as source:
                for batch in pa.ipc.open_stream(source):  # one record batch at a time
                    labels = batch.column(batch.schema.get_field_index("labels"))
                    lengths = pc.list_value_length(labels).fill_null(0).to_numpy(zero_copy_only=False)
                    values = pc.list_flatten(labels).to_numpy(zero_copy_only=False)
                    row_of = np.repeat(np.arange(len(lengths)), lengths)
                    first = np.zeros(len(values), dtype=bool)  # labels[0] of a row is never predicted
                    first[(np.cumsum(lengths) - lengths)[lengths > 0]] = True
                    labelled = np.zeros(len(lengths), dtype=bool)
                    labelled[row_of[(values != -100) & ~first]] = True
                    n += int((~labelled).sum())
        except (pa.ArrowInvalid, KeyError, IndexError, OSError) as exc:
            raise DataError(f"unreadable shard ({exc})", path=str(shard)) from exc
    return n


def check_labelled(manifest: dict[str, Any], folder: str | Path) -> None:
    """Refuse a prepared folder holding a row with no label token: such a row trains
    nothing and its mean loss is 0/0 = NaN. Uses the manifest's
    ``packs_without_labels`` (written by ``cpt prepare``, always 0 now: such rows are
    dropped and counted in ``packs_dropped``); a manifest without it (an older
    ``cpt prepare``) is checked by counting the shards (:func:`unlabeled_rows`).

    Raises:
        DataError: naming the folder, how many rows have no label, and the fix.
    """
    n = manifest.get("packs_without_labels")
    if n is None:
        n = unlabeled_rows(folder)
    if n:
        raise DataError(
            f"{n} of {manifest.get('packs', '?')} rows have no label token (every label -100 after the row's first, "
            "which is never predicted): they train nothing "
            "and give a NaN loss; prepare the data again with this cptcore (it skips such records and counts them)",
            path=str(folder),
        )


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
