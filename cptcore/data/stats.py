"""Counting what happened to every document, the rich progress bar and summary table."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
from .token_bytes import row_label_bytes


def reason_key(reason: str) -> str:
    """The reason counted in the manifest: the message without its detail in brackets
    (``"malformed JSON (Expecting value)"`` -> ``"malformed JSON"``)."""
    return reason.split(" (", 1)[0]


@dataclass
class InputStats:
    """Counters of one ``--input``: ``read = packed + sum(skipped)`` always holds.

    ``not_read``/``bytes_not_read``: records of the input never taken (``--mix
    downsample`` stopped before them), and their bytes; 0 when the input was read to
    the end. Bytes are what the reader consumed (:attr:`cptcore.data.readers.Record.nbytes`:
    the line's bytes, decompressed for ``.gz``; Parquet: the file size shared over its
    rows), the same unit as ``bytes_read``.
    """

    input: str
    weight: float | None
    files: set = field(default_factory=set)
    read: int = 0
    packed: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    tokens_in: int = 0  # tokens of the documents read (after BOS/EOS)
    tokens_packed: int = 0  # tokens handed to the packer (after truncation)
    tokens_truncated: int = 0
    tokens_skipped: int = 0  # tokens of documents skipped as too long
    epochs: int = 0
    exhausted: bool = False
    bytes_read: int = 0
    not_read: int = 0
    bytes_not_read: int = 0

    def to_dict(self, total_packed: int, weight_sum: float | None) -> dict[str, Any]:
        return {
            "input": self.input,
            "files": sorted(self.files),
            "weight": self.weight,
            "target_proportion": (self.weight / weight_sum) if self.weight and weight_sum else None,
            "achieved_proportion": (self.tokens_packed / total_packed) if total_packed else 0.0,
            "documents": {
                "read": self.read,
                "packed": self.packed,
                "skipped": dict(sorted(self.skipped.items())),
                "not_read": self.not_read,
            },
            "bytes": {"read": self.bytes_read, "not_read": self.bytes_not_read},
            "tokens": {
                "in": self.tokens_in,
                "packed": self.tokens_packed,
                "truncated": self.tokens_truncated,
                "skipped": self.tokens_skipped,
            },
            "epochs": self.epochs,
            "exhausted": self.exhausted,
        }


@dataclass
class RowStats:
    """Counters of the rows written: ``slots`` is the sum of row lengths (padding
    included), ``longest`` the longest row, ``without_labels`` rows with no trained
    label (none at position 1 or later, :func:`cptcore.data.packing.has_label`; 0 by
    construction: such rows are dropped and counted in ``dropped_rows`` /
    ``dropped_tokens``)."""

    packs: int = 0
    tokens_out: int = 0
    pad: int = 0
    label_tokens: int = 0
    slots: int = 0
    longest: int = 0
    without_labels: int = 0
    dropped_rows: int = 0
    dropped_tokens: int = 0
    label_bytes: int | None = 0  # None once a row without bytes per token was seen

    def add(self, rows: Sequence[Any]) -> None:
        for r in rows:
            nb = getattr(r, "nbytes", None)
            if nb is None or self.label_bytes is None:
                self.label_bytes = None
            else:
                self.label_bytes += row_label_bytes(r.labels, nb)
            n = int(r.input_ids.shape[0])
            labels = int((r.labels != -100).sum())
            self.packs += 1
            self.pad += r.n_pad
            self.tokens_out += n - r.n_pad
            self.slots += n
            self.longest = max(self.longest, n)
            self.label_tokens += labels
            self.without_labels += not bool((r.labels[1:] != -100).any())  # labels[0] is never predicted


class Progress:
    """A rich progress bar over input bytes with documents, tokens/s and the ETA (remaining bytes over rich's recent bytes/s; ``-:--:--`` until it has a
    rate, or when the total is unknown) on stderr (or ``console``); does nothing when
    disabled. With ``--mix downsample`` the run may stop before all bytes are read, so
    the ETA is an upper bound there. ``clock`` (seconds) is for tests."""

    def __init__(self, total_bytes: int, enabled: bool, title: str, console: Any = None, clock: Callable[[], float] = time.perf_counter):
        self.enabled = enabled
        self.clock = clock
        self.start = clock()
        self.tokens = 0
        self.docs = 0
        self._pending = 0  # bytes read since the bar was last redrawn
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress as RichProgress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._p = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[docs]} docs  {task.fields[rate]} tok/s"),
            TextColumn("ETA"),  # no elapsed column: the line fits 80 columns (the summary gives the seconds)
            TimeRemainingColumn(),
            console=console if console is not None else Console(stderr=True),
            transient=False,
            get_time=clock,
        )
        self._task = self._p.add_task(title, total=total_bytes or None, docs=0, rate="0")
        self._p.start()
        self._last = 0.0

    def advance(self, nbytes: int, tokens: int) -> None:
        self.tokens += tokens
        self.docs += 1
        if not self.enabled:
            return
        now = self.clock()
        if now - self._last > 0.2:
            rate = self.tokens / max(now - self.start, 1e-9)
            self._p.update(self._task, advance=nbytes + self._pending, docs=self.docs, rate=f"{rate:,.0f}")
            self._pending = 0
            self._last = now
        else:
            self._pending += nbytes

    def close(self) -> None:
        if self.enabled:
            self._p.update(self._task, advance=self._pending, docs=self.docs)
            self._p.stop()


def print_summary(manifest: dict[str, Any], out_dir: str) -> None:
    """The summary table at the end of ``cpt prepare`` (stdout)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cpt prepare {manifest['kind']} -> {out_dir}")
    cols = ["input", "read", "packed", "skipped", "tokens", "target", "achieved"]
    unread = manifest["documents"].get("not_read", 0)
    if unread:
        cols.insert(4, "not read")
    for col in cols:
        table.add_column(col, justify="left" if col in ("input", "skipped") else "right", overflow="fold")
    for inp in manifest["inputs"]:
        docs = inp["documents"]
        skipped = ", ".join(f"{k}: {v}" for k, v in docs["skipped"].items()) or "0"
        target = inp["target_proportion"]
        cells = [
            inp["input"],
            f"{docs['read']:,}",
            f"{docs['packed']:,}",
            skipped,
            f"{inp['tokens']['packed']:,}",
            "" if target is None else f"{target:.1%}",
            f"{inp['achieved_proportion']:.1%}",
        ]
        if unread:
            cells.insert(4, f"{docs.get('not_read', 0):,} ({_bytes(inp.get('bytes', {}).get('not_read', 0))})")
        table.add_row(*cells)
    d, t = manifest["documents"], manifest["tokens"]
    L, packs = manifest["max_length"], manifest["packs"]
    longest = manifest.get("longest_pack", L)
    if manifest["packer"] is None:  # SFT without packing: rows as long as their conversation
        rows = f"unpadded rows of ≤ {longest} (padded per micro-batch when training)"
    else:
        rows = f"rows of {L}" if longest == L else f"rows of ≤ {longest}"
    dropped = manifest.get("packs_dropped", 0)
    table.caption = (
        f"{d['read']:,} read = {d['packed']:,} packed + {sum(d['skipped'].values()):,} skipped"
        + (f" · {unread:,} not read (--mix downsample)" if unread else "")
        + f" · {t['out']:,} tokens in {packs:,} {rows} ({manifest['packer'] or 'no packer'})"
        + (f" · {dropped:,} rows without a label dropped" if dropped else "")
        + f" · useful {manifest['useful_token_fraction']:.2%} · {manifest['seconds']:.1f} s"
    )
    Console().print(table)


def _bytes(n: int) -> str:
    """``n`` bytes in decimal units, as rich's DownloadColumn shows them."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"
