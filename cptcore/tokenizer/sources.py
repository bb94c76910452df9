"""Read the pieces to add to a vocabulary (``cpt tokenizer expand --add SOURCE``).

SOURCE is one of:

* a SentencePiece model (``*.model``): its NORMAL and USER_DEFINED pieces, in id order
  (for a BPE model that is merge order, so a piece's sub-pieces come before it);
* a JSONL file (``*.jsonl``): one object per line with a string ``"piece"`` (the seed
  project's format); blank lines are ignored;
* any other file: UTF-8 text, one token per line (the line without its line ending).

Spaces inside a token are mapped to ``▁`` (U+2581), the SentencePiece word-boundary
marker, so ``" 中国"`` and ``"▁中国"`` are the same piece.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

SPACE_MARK = "\u2581"


@dataclass(frozen=True)
class Candidate:
    """A piece to add and where it came from (``file:line`` or ``file#id``)."""

    piece: str
    origin: str


def normalize_piece(text: str) -> str:
    """Map ASCII spaces to ``▁`` (SentencePiece's whitespace marker)."""
    return text.replace(" ", SPACE_MARK)


def read_candidates(source: str | Path) -> list[Candidate]:
    """All candidate pieces of ``source`` in file order, spaces mapped to ``▁``.

    Empty pieces are returned too (as ``""``) so the caller can count them as rejected.

    Raises:
        DataError: the file is missing or unreadable, a ``.model`` file is not a
            SentencePiece model, a text line is not UTF-8, or a JSONL line is not an
            object with a string ``piece`` (message ``path:line: problem``).
    """
    path = Path(source)
    if not path.is_file():
        raise DataError("token source not found", path=str(path))
    if path.suffix == ".model":
        return _from_sentencepiece(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read token source ({exc.strerror})", path=str(path)) from None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    jsonl = path.suffix == ".jsonl"
    out: list[Candidate] = []
    for number, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text (byte {exc.start})", path=str(path), line=number) from None
        text = text[:-1] if text.endswith("\r") else text
        origin = f"{path}:{number}"
        if jsonl:
            if not text.strip():
                continue
            out.append(Candidate(normalize_piece(_json_piece(text, path, number)), origin))
        else:
            out.append(Candidate(normalize_piece(text), origin))
    return out


def _json_piece(text: str, path: Path, number: int) -> str:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=str(path), line=number) from None
    if not isinstance(obj, dict) or "piece" not in obj:
        raise DataError('expected an object with a "piece" field', path=str(path), line=number)
    piece = obj["piece"]
    if not isinstance(piece, str):
        raise DataError(f'"piece" must be a string, got {type(piece).__name__}', path=str(path), line=number)
    return piece


def load_model_proto(path: str | Path):
    """Parse a SentencePiece ``ModelProto`` from ``path``.

    Raises:
        DataError: the file cannot be read or is not a SentencePiece model.
    """
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    p = Path(path)
    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(p.read_bytes())
    except OSError as exc:
        raise DataError(f"cannot read ({exc.strerror})", path=str(p)) from None
    except DecodeError:
        raise DataError("not a SentencePiece model (protobuf parse failed)", path=str(p)) from None
    if len(proto.pieces) == 0:
        raise DataError("not a SentencePiece model (no pieces)", path=str(p))
    return proto


def _from_sentencepiece(path: Path) -> list[Candidate]:
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = load_model_proto(path)
    keep = (sp_pb2.ModelProto.SentencePiece.NORMAL, sp_pb2.ModelProto.SentencePiece.USER_DEFINED)
    return [Candidate(p.piece, f"{path}#{i}") for i, p in enumerate(proto.pieces) if p.type in keep]
