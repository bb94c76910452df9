"""Writing rows as a ``datasets`` Arrow folder, as they come (bounded memory).

Rows are appended to one temporary Arrow file next to the output folder (``datasets``'
``ArrowWriter``); at the end the file is memory-mapped and saved with
``Dataset.save_to_disk(out, num_shards=N)`` and the temporary file removed. Identical
rows give byte-identical shards (the fingerprint is derived from the rows, not from
time or paths).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from .token_bytes import row_label_bytes

COLUMNS = ("input_ids", "labels", "position_ids")
#: int64 per row: UTF-8 bytes of the tokens that carry loss (-1: unknown), see
#: :mod:`cptcore.data.token_bytes`
LABEL_BYTES = "label_bytes"


def features():
    """``datasets.Features``: three int32 list columns and the int64 ``label_bytes``."""
    from datasets import Features, Sequence as Seq, Value

    feats = {c: Seq(Value("int32")) for c in COLUMNS}
    feats[LABEL_BYTES] = Value("int64")
    return Features(feats)


def label_bytes_of(row) -> int:
    """The ``label_bytes`` value of a :class:`~cptcore.data.packing.Row` (-1 when the row
    has no bytes per token)."""
    nb = getattr(row, "nbytes", None)
    return -1 if nb is None else row_label_bytes(row.labels, nb)


class ShardWriter:
    """Append :class:`~cptcore.data.packing.Row` objects; :meth:`close` writes shards."""

    def __init__(self, out_dir: str | Path, batch_rows: int = 1024):
        from datasets.arrow_writer import ArrowWriter

        self.out_dir = Path(out_dir)
        self.tmp = self.out_dir.parent / f".{self.out_dir.name}.rows.arrow"
        self.batch_rows = batch_rows
        self._buf: list = []
        self._hash = hashlib.sha256()
        self._writer = ArrowWriter(features=features(), path=str(self.tmp))
        self.rows = 0

    def write(self, rows: Sequence) -> None:
        self._buf.extend(rows)
        if len(self._buf) >= self.batch_rows:
            self._drain()

    def _drain(self) -> None:
        if not self._buf:
            return
        import pyarrow as pa

        lengths = np.fromiter((r.input_ids.shape[0] for r in self._buf), dtype=np.int32, count=len(self._buf))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        cols = {}
        for name in COLUMNS:
            values = np.concatenate([getattr(r, name) for r in self._buf]).astype(np.int32, copy=False)
            cols[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        cols[LABEL_BYTES] = pa.array(np.fromiter((label_bytes_of(r) for r in self._buf), dtype=np.int64, count=len(self._buf)))
        # Fingerprint: row lengths and every row's first 16 ids (cheap; deterministic).
        self._hash.update(lengths.tobytes())
        self._hash.update(b"".join(r.input_ids[:16].tobytes() for r in self._buf))
        self._writer.write_table(pa.table(cols))
        self.rows += len(self._buf)
        self._buf = []

    def close(self, num_shards: int) -> int:
        """Write ``num_shards`` shards (fewer when there are fewer rows); returns the
        number of shards written."""
        from datasets import Dataset
        from datasets.utils import logging as ds_logging

        self._drain()
        self._writer.finalize()
        try:
            ds = Dataset.from_file(str(self.tmp))
            ds._fingerprint = self._hash.hexdigest()[:16]
            shards = max(1, min(num_shards, len(ds)))
            was_enabled = ds_logging.is_progress_bar_enabled()
            ds_logging.disable_progress_bar()  # our own progress bar is enough
            try:
                ds.save_to_disk(str(self.out_dir), num_shards=shards)
            finally:
                if was_enabled:
                    ds_logging.enable_progress_bar()
            del ds
        finally:
            if self.tmp.exists():
                os.remove(self.tmp)
        return shards

    def abort(self) -> None:
        try:
            self._writer.finalize()
        except Exception:  # the writer may be half-written; we only clean up
            pass
        if self.tmp.exists():
            os.remove(self.tmp)
