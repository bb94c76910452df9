"""The data contract between ``cpt prepare`` and ``cpt train``, in one place.

A prepared folder holds rows with the columns :data:`REQUIRED_COLUMNS` (int32 ``[len]``
each): ``input_ids``, ``labels`` (:data:`IGNORE_INDEX` where a token carries no loss)
and ``position_ids`` (restarting at 0 at every document start; a trailing pad span has
its own positions from 0, pad id with label :data:`IGNORE_INDEX`). Optional columns
(:data:`OPTIONAL_COLUMNS`) are read only by the objectives or evaluators that ask for
them. ``manifest.json`` beside the rows is read through :class:`Manifest`.

Torch-free: importing this module imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

#: label value of a token that carries no loss (PyTorch cross-entropy's ``ignore_index``)
IGNORE_INDEX = -100
INPUT_IDS, LABELS, POSITION_IDS = "input_ids", "labels", "position_ids"
#: columns every prepared folder has
REQUIRED_COLUMNS = (INPUT_IDS, LABELS, POSITION_IDS)
#: columns some folders have (``label_bytes``: UTF-8 bytes each label token stands for,
#: for bits per byte)
OPTIONAL_COLUMNS = ("label_bytes",)


@dataclass(frozen=True)
class Manifest:
    """The fields of a prepared folder's ``manifest.json`` that training reads (the
    whole file stays available as :attr:`raw`; schema in docs/data.md).

    Attributes:
        path: the prepared folder.
        kind: ``"pretrain"`` | ``"sft"`` (``""`` when unstated).
        max_length: longest row in tokens, or ``None`` when unstated.
        pad_id: token id used for padding, or ``None``.
        rows: number of rows (``packs``), or ``None`` when unstated.
        vocab_hash: ``"sha256:..."`` of the tokenizer the data was prepared with.
        tokenizer_name, vocab_size: what the manifest says about that tokenizer.
        columns: the row columns the manifest declares (defaults to the required ones).
    """

    path: Path
    kind: str = ""
    max_length: int | None = None
    pad_id: int | None = None
    rows: int | None = None
    vocab_hash: str | None = None
    tokenizer_name: str | None = None
    vocab_size: int | None = None
    columns: tuple[str, ...] = REQUIRED_COLUMNS
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | Path) -> "Manifest":
        """Read the fields out of a parsed ``manifest.json`` (missing ones stay ``None``)."""
        tok = data.get("tokenizer") if isinstance(data.get("tokenizer"), Mapping) else {}
        vocab_hash = tok.get("vocab_hash") or tok.get("hash") or data.get("tokenizer_vocab_hash") or data.get("vocab_hash")
        length = data.get("max_length")
        cols = data.get("columns")
        return cls(
            path=Path(path), kind=str(data.get("kind") or ""),
            max_length=length if isinstance(length, int) else None,
            pad_id=data.get("pad_id") if isinstance(data.get("pad_id"), int) else None,
            rows=data.get("packs") if isinstance(data.get("packs"), int) else None,
            vocab_hash=vocab_hash, tokenizer_name=tok.get("name_or_path"), vocab_size=tok.get("vocab_size"),
            columns=tuple(cols) if isinstance(cols, (list, tuple)) else REQUIRED_COLUMNS,
            raw=dict(data),
        )

    def get(self, key: str, default: Any = None) -> Any:
        """A raw manifest field (for keys this class does not name)."""
        return self.raw.get(key, default)
