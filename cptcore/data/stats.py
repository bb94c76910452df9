"""Counting what happened to every document, the rich progress bar and summary table."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Sequence


def reason_key(reason: str) -> str:
    """The reason counted in the manifest: the message without its detail in brackets
    (``"malformed JSON (Expecting value)"`` -> ``"malformed JSON"``)."""
    return reason.split(" (", 1)[0]


@dataclass
class InputStats:
    """Counters of one ``--input``: ``read = packed + sum(skipped)`` always holds."""

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

    def to_dict(self, total_packed: int, weight_sum: float | None) -> dict[str, Any]:
        return {
            "input": self.input,
            "files": sorted(self.files),
            "weight": self.weight,
            "target_proportion": (self.weight / weight_sum) if self.weight and weight_sum else None,
            "achieved_proportion": (self.tokens_packed / total_packed) if total_packed else 0.0,
            "documents": {"read": self.read, "packed": self.packed, "skipped": dict(sorted(self.skipped.items()))},
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
    packs: int = 0
    tokens_out: int = 0
    pad: int = 0
    label_tokens: int = 0

    def add(self, rows: Sequence[Any]) -> None:
        for r in rows:
            self.packs += 1
            self.pad += r.n_pad
            self.tokens_out += r.input_ids.shape[0] - r.n_pad
            self.label_tokens += int((r.labels != -100).sum())


class Progress:
    """A rich progress bar over input bytes with documents and tokens/s (stderr); does
    nothing when disabled."""

    def __init__(self, total_bytes: int, enabled: bool, title: str):
        self.enabled = enabled
        self.start = time.perf_counter()
        self.tokens = 0
        self.docs = 0
        self._pending = 0  # bytes read since the bar was last redrawn
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        self._p = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[docs]} docs  {task.fields[rate]} tok/s"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._p.add_task(title, total=total_bytes or None, docs=0, rate="0")
        self._p.start()
        self._last = 0.0

    def advance(self, nbytes: int, tokens: int) -> None:
        self.tokens += tokens
        self.docs += 1
        if not self.enabled:
            return
        now = time.perf_counter()
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
    for col in ("input", "read", "packed", "skipped", "tokens", "target", "achieved"):
        table.add_column(col, justify="left" if col in ("input", "skipped") else "right", overflow="fold")
    for inp in manifest["inputs"]:
        docs = inp["documents"]
        skipped = ", ".join(f"{k}: {v}" for k, v in docs["skipped"].items()) or "0"
        target = inp["target_proportion"]
        table.add_row(
            inp["input"],
            f"{docs['read']:,}",
            f"{docs['packed']:,}",
            skipped,
            f"{inp['tokens']['packed']:,}",
            "" if target is None else f"{target:.1%}",
            f"{inp['achieved_proportion']:.1%}",
        )
    d, t = manifest["documents"], manifest["tokens"]
    table.caption = (
        f"{d['read']:,} read = {d['packed']:,} packed + {sum(d['skipped'].values()):,} skipped · "
        f"{t['out']:,} tokens in {manifest['packs']:,} rows of {manifest['max_length']} "
        f"({manifest['packer'] or 'no packer'}) · useful {manifest['useful_token_fraction']:.2%} · "
        f"{manifest['seconds']:.1f} s"
    )
    Console().print(table)
