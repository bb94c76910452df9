"""Options of the built-in packers (``--set packer.KEY=VALUE``); no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpliceOptions:
    last: str = "pad"  # the last partial row: "pad" it to max_length or "keep" it shorter

    def __post_init__(self) -> None:
        if self.last not in ("pad", "keep"):
            raise ValueError(f"last must be 'pad' or 'keep', got {self.last!r}")


@dataclass(frozen=True)
class WholeDocOptions:
    pad: bool = True  # pad every row to max_length (False: rows as long as their documents)


@dataclass(frozen=True)
class BfdOptions:
    pad: bool = True  # pad every row to max_length
    buffer_docs: int = 20000  # documents bin-packed together (bounds memory; larger packs tighter)

    def __post_init__(self) -> None:
        if self.buffer_docs < 1:
            raise ValueError("buffer_docs must be >= 1")
