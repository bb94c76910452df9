"""Packers: tokenized documents in, fixed-length training rows out.

A :class:`Doc` is one tokenized document (``input_ids`` and ``labels``, int32 arrays of
the same length). A :class:`Row` is one training example: ``input_ids``, ``labels``
(-100 where masked) and ``position_ids`` (int32, restarting at 0 at every document
boundary and at the start of every row), plus how many of its tokens are padding.
Padding uses ``pad_id`` with label -100, and its positions restart at 0 (the pad span
is its own "document", so it never attends to real tokens).

Rows also carry ``nbytes`` (int32 ``[length]``, UTF-8 bytes per token, 0 for padding;
see :mod:`cptcore.data.token_bytes`), sliced and concatenated with the tokens, from which
the writer computes the ``label_bytes`` column; ``None`` when the documents had none.

A packer (made by ``PackerSpec.make(max_length, pad_id, options)``) has ``add(doc) ->
list[Row]`` and ``flush() -> list[Row]``; it holds a bounded buffer.

No packer emits a row without a label token (every label -100): such a row trains
nothing, and the mean loss over its zero label tokens is 0/0 = NaN (the ColossalAI
#5370 pattern). The built-in packers drop such a row and count it, with its non-pad
tokens, in their ``dropped`` (:class:`Dropped`); ``cpt prepare`` also drops any that a
plugin packer returns, and counts them the same way.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .packing_options import BfdOptions, SpliceOptions, WholeDocOptions
from .tokenize import IGNORE


@dataclass
class Doc:
    """A tokenized document: ``input_ids``/``labels`` int32 ``[n]``; ``source`` is the
    index of the input it came from; ``nbytes`` int32 ``[n]`` the UTF-8 bytes of each
    token (None: unknown)."""

    input_ids: np.ndarray
    labels: np.ndarray
    source: int = 0
    nbytes: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Row:
    """A packed row: ``input_ids``, ``labels``, ``position_ids`` int32 ``[length]``;
    the last ``n_pad`` tokens are padding; ``nbytes`` int32 ``[length]`` bytes per token
    (None: unknown)."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    n_pad: int = 0
    nbytes: np.ndarray | None = None


@dataclass
class Dropped:
    """Rows not emitted because none of their tokens carries a label, and the number of
    non-pad tokens in them."""

    rows: int = 0
    tokens: int = 0


def has_label(row: Row) -> bool:
    """Whether at least one label of ``row`` is trained: a label (not -100) at position
    1 or later. Labels are not shifted; the model shifts them (position ``t``'s logits
    predict ``labels[t + 1]``, HF's ``ForCausalLMLoss``), so ``labels[0]`` is never
    predicted and a row whose only label is its first (a document's trained last token
    spliced to the start of a row, a one-token last row) trains nothing, a NaN loss."""
    return bool((row.labels[1:] != IGNORE).any())


def trainable(rows: Sequence[Row], dropped: Dropped) -> list[Row]:
    """``rows`` without those that have no trained label (:func:`has_label`); each one
    left out is counted in ``dropped`` (rows, and their non-pad tokens)."""
    kept = []
    for r in rows:
        if has_label(r):
            kept.append(r)
        else:
            dropped.rows += 1
            dropped.tokens += int(r.input_ids.shape[0]) - r.n_pad
    return kept


def make_doc(input_ids: Sequence[int], labels: Sequence[int] | None = None, source: int = 0,
             nbytes: Sequence[int] | None = None) -> Doc:
    ids = np.asarray(input_ids, dtype=np.int32)
    lab = ids.copy() if labels is None else np.asarray(labels, dtype=np.int32)
    return Doc(ids, lab, source, None if nbytes is None else np.asarray(nbytes, dtype=np.int32))


def _cat_bytes(parts: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """Concatenated bytes per token, or None when any part is unknown."""
    if any(p is None for p in parts):
        return None
    return np.concatenate(parts).astype(np.int32, copy=False) if parts else np.zeros(0, np.int32)


def _slice_bytes(nbytes: np.ndarray | None, index) -> np.ndarray | None:
    return None if nbytes is None else nbytes[index]


def positions_from_starts(starts: np.ndarray) -> np.ndarray:
    """``position_ids`` ``[n]`` int32 from a bool array marking each document's first
    token: ``arange`` restarting at 0 at every marked index (index 0 always starts)."""
    n = starts.shape[0]
    idx = np.arange(n, dtype=np.int32)
    marks = np.where(starts, idx, 0)
    if n:
        marks[0] = 0
    return idx - np.maximum.accumulate(marks)


def build_row(docs: Sequence[Doc], length: int | None, pad_id: int) -> Row:
    """Concatenate whole documents into one row, padded to ``length`` (no padding when
    ``length`` is None)."""
    ids = np.concatenate([d.input_ids for d in docs]) if docs else np.zeros(0, np.int32)
    lab = np.concatenate([d.labels for d in docs]) if docs else np.zeros(0, np.int32)
    pos = np.concatenate([np.arange(len(d), dtype=np.int32) for d in docs]) if docs else np.zeros(0, np.int32)
    return pad_row(ids, lab, pos, length, pad_id, _cat_bytes([d.nbytes for d in docs]))


def pad_row(ids: np.ndarray, lab: np.ndarray, pos: np.ndarray, length: int | None, pad_id: int,
            nbytes: np.ndarray | None = None) -> Row:
    """A :class:`Row` of ``ids``/``lab``/``pos`` (and bytes per token ``nbytes``) padded to
    ``length`` (pad labels -100, pad positions restarting at 0, pad bytes 0); no padding
    when ``length`` is None or reached."""
    n_pad = 0 if length is None else length - ids.shape[0]
    if n_pad > 0:
        ids = np.concatenate([ids, np.full(n_pad, pad_id, np.int32)])
        lab = np.concatenate([lab, np.full(n_pad, IGNORE, np.int32)])
        pos = np.concatenate([pos, np.arange(n_pad, dtype=np.int32)])
        if nbytes is not None:
            nbytes = np.concatenate([nbytes, np.zeros(n_pad, np.int32)])
    return Row(ids, lab, pos, max(n_pad, 0), nbytes)


#: Reasons a document with masked tokens is skipped before packing (always counted).
SOURCE_TOO_LONG = "source longer than max_length"
NO_TARGET = "no target tokens"


def masked_reason(labels: np.ndarray, max_length: int) -> str | None:
    """Why a document whose ``labels`` (int32 ``[n]``, -100 = masked) are partly masked
    cannot be packed, or None when it can.

    ``"no target tokens"``: every label is -100 (a ``{source, target}`` row with an
    empty target and no EOS). ``"source longer than max_length"``: the masked prefix
    (BOS + source) is at least ``max_length`` tokens, so no row could hold it with one
    target token; packing it would give rows without a label (a NaN loss). Such
    records are skipped rather than cut from the left: the target would then be
    trained on a source without its beginning, which is no longer the record's pair
    (the SFT path skips an over-long first turn the same way). A ``{source, target}``
    document has one masked run, that prefix, and a trained last token (the target's
    or EOS), so once the prefix is shorter than a row a row that starts with the
    document has a label; a row ``splice`` starts inside it or just before it (with the
    previous document's trained EOS as the row's never-predicted first label) may not,
    and :func:`trainable` drops it.
    """
    trained = np.flatnonzero(labels != IGNORE)
    if not trained.size:
        return NO_TARGET
    if trained[0] >= max_length:
        return SOURCE_TOO_LONG
    return None


def fit_long(doc: Doc, max_length: int, policy: str, eos_id: int | None = None) -> list[Doc]:
    """Apply the over-long document policy: ``split`` into ``max_length`` chunks (the
    default), ``truncate`` to the first ``max_length`` tokens (keeping the final
    ``eos_id`` when the document ends with it, so documents stay separated), or
    ``skip`` (returns ``[]``). Documents that fit are returned as they are.

    A piece without any label token (a chunk lying wholly inside a masked span, such
    as a long ``{source, target}`` source) is left out: it would train nothing. The
    caller counts what is left out as truncated (``len(doc) - sum(len(pieces))``);
    ``cpt prepare`` skips such records before this (``source longer than
    max_length``), so there it never happens."""
    n = len(doc)
    if n <= max_length:
        return [doc]
    if policy == "skip":
        return []
    if policy == "truncate":
        if eos_id is not None and int(doc.input_ids[-1]) == eos_id:
            keep = np.r_[0:max_length - 1, n - 1]
            pieces = [Doc(doc.input_ids[keep], doc.labels[keep], doc.source, _slice_bytes(doc.nbytes, keep))]
        else:
            cut = slice(0, max_length)
            pieces = [Doc(doc.input_ids[cut], doc.labels[cut], doc.source, _slice_bytes(doc.nbytes, cut))]
    else:
        pieces = [
            Doc(doc.input_ids[i : i + max_length], doc.labels[i : i + max_length], doc.source,
                _slice_bytes(doc.nbytes, slice(i, i + max_length)))
            for i in range(0, n, max_length)
        ]
    return [p for p in pieces if (p.labels != IGNORE).any()]


# ----------------------------------------------------------------------------- splice




class SplicePacker:
    """Concatenate all documents and cut every ``max_length`` tokens; documents may span
    rows; the last partial row is padded (or kept short) and its padding counted. Only a
    row without a trained label (:func:`has_label`: masked spans after its first token
    fill it, e.g. SFT prompts or a trained EOS then a long source; or a one-token last
    row) is dropped, into ``dropped``."""

    def __init__(self, max_length: int, pad_id: int, options: SpliceOptions | None = None):
        self.max_length = max_length
        self.pad_id = pad_id
        self.options = options or SpliceOptions()
        self.dropped = Dropped()
        self._ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._nbytes: list[np.ndarray | None] = []
        self._n = 0

    def add(self, doc: Doc) -> list[Row]:
        if len(doc) == 0:
            return []
        starts = np.zeros(len(doc), dtype=bool)
        starts[0] = True
        self._ids.append(doc.input_ids)
        self._labels.append(doc.labels)
        self._starts.append(starts)
        self._nbytes.append(doc.nbytes)
        self._n += len(doc)
        if self._n < self.max_length:
            return []
        return self._cut(final=False)

    def _cut(self, final: bool) -> list[Row]:
        ids = np.concatenate(self._ids)
        lab = np.concatenate(self._labels)
        starts = np.concatenate(self._starts)
        nbytes = _cat_bytes(self._nbytes)
        L = self.max_length
        k = ids.shape[0] // L
        rows = []
        for r in range(k):
            s = slice(r * L, (r + 1) * L)
            rows.append(Row(ids[s], lab[s], positions_from_starts(starts[s]), 0, _slice_bytes(nbytes, s)))
        rest = slice(k * L, None)
        self._ids, self._labels, self._starts = [ids[rest]], [lab[rest]], [starts[rest]]
        self._nbytes = [_slice_bytes(nbytes, rest)]
        self._n = ids.shape[0] - k * L
        if final and self._n:
            length = L if self.options.last == "pad" else None
            rows.append(pad_row(ids[rest], lab[rest], positions_from_starts(starts[rest]), length, self.pad_id,
                                _slice_bytes(nbytes, rest)))
            self._ids, self._labels, self._starts, self._nbytes, self._n = [], [], [], [], 0
        return trainable(rows, self.dropped)

    def flush(self) -> list[Row]:
        if not self._n:
            return []
        return self._cut(final=True)


# ----------------------------------------------------------------------------- greedy






class GreedyPacker:
    """The seed's packer: add whole documents to the current row until the next one does
    not fit, then start a new row. Documents must be at most ``max_length`` long."""

    def __init__(self, max_length: int, pad_id: int, options: WholeDocOptions | None = None):
        self.max_length = max_length
        self.pad_id = pad_id
        self.options = options or WholeDocOptions()
        self.dropped = Dropped()
        self._docs: list[Doc] = []
        self._n = 0

    def add(self, doc: Doc) -> list[Row]:
        if len(doc) > self.max_length:
            raise ValueError(f"document of {len(doc)} tokens > max_length {self.max_length}")
        out = []
        if self._n + len(doc) > self.max_length:
            out = self.flush()
        self._docs.append(doc)
        self._n += len(doc)
        return out

    def flush(self) -> list[Row]:
        if not self._docs:
            return []
        row = build_row(self._docs, self.max_length if self.options.pad else None, self.pad_id)
        self._docs, self._n = [], 0
        return trainable([row], self.dropped)


class BfdPacker:
    """Best-fit decreasing bin packing of whole documents, over buffers of
    ``buffer_docs`` documents: sort by length (longest first, ties by arrival), put each
    into the open row with the least room that still fits it, else open a new row.
    Rows come out in the order they were opened. (Best-fit decreasing: Johnson, "Near-
    optimal bin packing algorithms", MIT 1973; uses at most 11/9 OPT + 1 bins.)"""

    def __init__(self, max_length: int, pad_id: int, options: BfdOptions | None = None):
        self.max_length = max_length
        self.pad_id = pad_id
        self.options = options or BfdOptions()
        self.dropped = Dropped()
        self._docs: list[Doc] = []

    def add(self, doc: Doc) -> list[Row]:
        if len(doc) > self.max_length:
            raise ValueError(f"document of {len(doc)} tokens > max_length {self.max_length}")
        self._docs.append(doc)
        if len(self._docs) >= self.options.buffer_docs:
            return self.flush()
        return []

    def flush(self) -> list[Row]:
        docs, self._docs = self._docs, []
        if not docs:
            return []
        order = sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i))
        bins: list[list[Doc]] = []
        room: list[tuple[int, int]] = []  # sorted (remaining room, bin index)
        for i in order:
            need = len(docs[i])
            j = bisect.bisect_left(room, (need, -1))
            if j < len(room):
                free, b = room.pop(j)
            else:
                free, b = self.max_length, len(bins)
                bins.append([])
            bins[b].append(docs[i])
            bisect.insort(room, (free - need, b))
        length = self.max_length if self.options.pad else None
        return trainable([build_row(b, length, self.pad_id) for b in bins], self.dropped)


class PassThrough:
    """No packing (SFT default): one unpadded row per document."""

    def __init__(self, max_length: int, pad_id: int, options: object = None):
        self.max_length = max_length
        self.pad_id = pad_id
        self.dropped = Dropped()

    def add(self, doc: Doc) -> list[Row]:
        return trainable([build_row([doc], None, self.pad_id)], self.dropped)

    def flush(self) -> list[Row]:
        return []


def pack_all(packer, docs: Iterable[Doc]) -> list[Row]:
    """Feed every document to ``packer`` and flush it (for tests and small inputs)."""
    rows: list[Row] = []
    for d in docs:
        rows.extend(packer.add(d))
    rows.extend(packer.flush())
    return rows
