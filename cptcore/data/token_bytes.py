"""UTF-8 bytes per token: what bits per byte divides by.

Bits per byte (``bpb``, see :mod:`cptcore.eval.bpb`) needs, for every token that carries
loss, how many bytes of the original text it stands for. The **attribution rule**:

1. Each token is credited with the bytes it *encodes*, looked up in a per-vocabulary
   table (:func:`byte_table`): a byte-level BPE token (GPT-2, LLaMA-3, SmolLM2, Qwen)
   with the bytes of its byte string, so a character whose UTF-8 bytes are split over
   two tokens is shared between them (``"飨"`` = 3 bytes as ``[2-byte token, 1-byte
   token]`` gives 2 and 1); a SentencePiece piece (LLaMA-2, Mistral) with the UTF-8
   length of its text, ``▁`` counted as the one-byte space and ``<0xNN>`` byte-fallback
   pieces as one byte. Special tokens (BOS, EOS, pad, chat markup such as
   ``<|im_end|>``) encode no text and count 0.
2. For a pretraining document, whose text is known, the difference between the text's
   UTF-8 length and the sum of (1) (SentencePiece's dummy-prefix space, a normaliser
   that changed the text) is settled on its first tokens (:func:`settle`): a surplus is
   taken from the first tokens in order (none goes below 0), a shortfall is added to the
   first token. A document's tokens therefore total exactly ``len(text.encode("utf-8"))``
   bytes, with any tokenizer. (For byte-level BPE the table alone is exact and nothing is
   settled.) SFT conversations use (1) alone: the text of a conversation is the
   rendered template, whose markup is not content.

A prepared row's ``label_bytes`` (int64) is the sum of this over the tokens that carry
loss in training: positions ``t >= 1`` with ``labels[t] != -100`` (the causal shift: the
first token of a row is never predicted), see :func:`row_label_bytes`. The
``cpt eval`` text path counts the same way, so both give the same bpb on the same text.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import numpy as np
from .tokenize import load_tokenizer

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-character map, inverted (character -> byte)."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", []) or []]
    return "ByteLevel" in kinds


def byte_table(tokenizer: Any) -> np.ndarray:
    """Bytes each token id encodes (rule 1 of the module docstring).

    Args:
        tokenizer: a Hugging Face tokenizer (fast or slow).

    Returns:
        ``[len(tokenizer)]`` int32: UTF-8 bytes of token id ``i``; 0 for special tokens.
    """
    vocab = tokenizer.get_vocab()
    table = np.zeros(max(len(tokenizer), max(vocab.values()) + 1), dtype=np.int32)
    special = set(tokenizer.all_special_ids)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special |= {i for i, tok in added.items() if getattr(tok, "special", False)}
    if _is_byte_level(tokenizer):
        dec = _byte_decoder()
        for piece, i in vocab.items():
            if i in added and i not in special:  # an added plain-text token: its text
                table[i] = len(str(added[i]).encode("utf-8"))
            else:
                table[i] = sum(1 if ch in dec else len(ch.encode("utf-8")) for ch in piece)
    else:
        for piece, i in vocab.items():
            table[i] = 1 if _BYTE_PIECE.match(piece) else len(piece.replace("\u2581", " ").encode("utf-8"))
    for i in special:
        if 0 <= i < table.shape[0]:
            table[i] = 0
    return table


@functools.lru_cache(maxsize=4)
def byte_table_for(tokenizer_path: str) -> np.ndarray:
    """:func:`byte_table` of the tokenizer folder at ``tokenizer_path`` (cached per process)."""
    return byte_table(load_tokenizer(tokenizer_path))


def settle(nbytes: np.ndarray, text_bytes: int) -> np.ndarray:
    """Rule 2: make ``nbytes`` (int32 ``[n]``, one document's tokens) sum to
    ``text_bytes``, changing its first tokens (a surplus is taken from the first tokens in
    order, none going below 0; a shortfall is added to the first token). Returns a new
    array; a document without tokens is returned as it is."""
    out = np.array(nbytes, dtype=np.int32, copy=True)
    diff = int(out.sum()) - int(text_bytes)
    if not out.shape[0] or diff == 0:
        return out
    if diff < 0:
        out[0] += -diff
        return out
    for i in range(out.shape[0]):
        take = min(int(out[i]), diff)
        out[i] -= take
        diff -= take
        if not diff:
            break
    return out


def token_bytes(table: np.ndarray, ids: Any, text: str | None = None) -> np.ndarray:
    """Bytes per token of one document: ``table[ids]``, settled against ``text`` when it
    is given (rule 2).

    Returns:
        int32 ``[len(ids)]``.
    """
    nb = lookup(table, ids)
    if text is not None:
        nb = settle(nb, len(text.encode("utf-8")))
    return nb


def lookup(table: np.ndarray, ids: Any) -> np.ndarray:
    """``table[ids]`` as int32 ``[n]``; ids outside the table count 0 (``cpt prepare``
    refuses such ids with its own error)."""
    ids = np.asarray(ids, dtype=np.int64)
    ok = (ids >= 0) & (ids < table.shape[0])
    return np.where(ok, table[np.where(ok, ids, 0)], 0).astype(np.int32)


def row_label_bytes(labels: np.ndarray, nbytes: np.ndarray) -> int:
    """A row's ``label_bytes``: bytes of the tokens that carry loss, i.e. positions
    ``t >= 1`` with ``labels[t] != -100`` (``labels``, ``nbytes`` ``[n]``)."""
    if labels.shape[0] < 2:
        return 0
    keep = labels[1:] != -100
    return int(nbytes[1:][keep].sum(dtype=np.int64))
