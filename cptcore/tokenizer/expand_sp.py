"""Merge new pieces into a SentencePiece BPE model (LLaMA-1/2, Mistral layout).

The base ``ModelProto`` (``sentencepiece.sentencepiece_model_pb2``) is parsed, new
NORMAL pieces are appended after the last id, and the proto is re-serialised: every
original id, piece, score and type is unchanged.

Scores: SentencePiece BPE merges the adjacent pair whose concatenation has the highest
score, and transformers' converter orders the fast tokenizer's merges by the same
scores (``convert_slow_tokenizer.generate_merges``). New pieces get scores strictly
below the model's current minimum, decreasing in source order (one float32 step apart,
``numpy.nextafter``), so they merge only after every original merge. Measured: score 0,
the common recipe (e.g. Chinese-LLaMA's ``merge_tokenizers.py``), ranks new merges
before old ones, which changes English tokenisation and makes the fast tokenizer and
sentencepiece disagree on some lines; below-minimum scores agree on every held-out line
in ``tests/test_tokenizer_expand_sp.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CptError
from .sources import Candidate, load_model_proto


@dataclass
class MergeResult:
    """Outcome of a merge. ``skipped`` maps reason -> count (reasons: ``empty``,
    ``special``, ``duplicate``, ``present``, ``over_target``)."""

    vocab_before: int
    vocab_after: int
    added: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def sentencepiece_file(base: str | Path) -> Path:
    """The SentencePiece model of ``base``: the file itself, or ``base/tokenizer.model``.

    Raises:
        CptError: ``base`` is a folder without ``tokenizer.model`` (not a SentencePiece
            tokenizer, e.g. byte-level BPE), or does not exist.
    """
    p = Path(base)
    if p.is_file():
        return p
    if p.is_dir():
        model = p / "tokenizer.model"
        if model.is_file():
            return model
        raise CptError(
            f"base tokenizer {p} is not SentencePiece (no tokenizer.model); "
            "a proto merge needs one (byte-level BPE tokenizers use --method bpe)"
        )
    raise CptError(f"base tokenizer not found: {p}")


def filter_candidates(
    candidates: list[Candidate], present: set[str], special: set[str], limit: int | None
) -> tuple[list[str], dict[str, int]]:
    """Pieces to add, in source order, and skip counts by reason.

    ``limit`` caps the number of pieces added (``None`` = no cap); the rest count as
    ``over_target``.
    """
    skipped = {"empty": 0, "special": 0, "duplicate": 0, "present": 0, "over_target": 0}
    seen: set[str] = set()
    keep: list[str] = []
    for cand in candidates:
        piece = cand.piece
        if piece == "":
            skipped["empty"] += 1
        elif piece in special:
            skipped["special"] += 1
        elif piece in seen:
            skipped["duplicate"] += 1
        elif piece in present:
            skipped["present"] += 1
            seen.add(piece)
        elif limit is not None and len(keep) >= limit:
            skipped["over_target"] += 1
            seen.add(piece)
        else:
            keep.append(piece)
            seen.add(piece)
    return keep, skipped


def merge_into_sentencepiece(
    base_model: str | Path,
    candidates: list[Candidate],
    extra_special: set[str] = frozenset(),
    target_vocab: int | None = None,
) -> tuple[bytes, MergeResult]:
    """Append ``candidates`` to the SentencePiece model ``base_model``.

    ``extra_special`` names special tokens of the Hugging Face folder (they are also
    rejected as pieces); the proto's CONTROL/UNKNOWN/BYTE pieces always are.
    ``target_vocab`` caps the final vocabulary size.

    Returns:
        (serialised ``ModelProto``, :class:`MergeResult`).

    Raises:
        DataError: ``base_model`` is not a SentencePiece model.
        CptError: the base is not a BPE model, or ``target_vocab`` is smaller than it.
    """
    import numpy as np
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = load_model_proto(base_model)
    if proto.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        kind = sp_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
        raise CptError(f"{base_model}: proto merge supports SentencePiece BPE models, this one is {kind}")
    before = len(proto.pieces)
    limit = None
    if target_vocab is not None:
        if target_vocab < before:
            raise CptError(f"target vocabulary {target_vocab} is smaller than the base vocabulary {before}")
        limit = target_vocab - before
    Piece = sp_pb2.ModelProto.SentencePiece
    present = {p.piece for p in proto.pieces}
    special = {p.piece for p in proto.pieces if p.type in (Piece.CONTROL, Piece.UNKNOWN, Piece.BYTE)}
    special |= set(extra_special)
    pieces, skipped = filter_candidates(candidates, present, special, limit)
    score = np.float32(min(p.score for p in proto.pieces))
    for piece in pieces:
        score = np.nextafter(score, np.float32(-np.inf))
        new = proto.pieces.add()
        new.piece = piece
        new.score = float(score)
        new.type = Piece.NORMAL
    proto.trainer_spec.vocab_size = len(proto.pieces)
    result = MergeResult(vocab_before=before, vocab_after=len(proto.pieces), added=pieces, skipped=skipped)
    return proto.SerializeToString(), result
