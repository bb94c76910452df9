"""Tokenizing documents: BOS/EOS conventions, batched encoding, loss masks from offsets.

Functions here are module-level and take the tokenizer *path*, so they pickle cheaply
and can be shipped to worker processes; each process loads the tokenizer once
(:func:`load_tokenizer` caches it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError

IGNORE = -100  # label value for tokens that carry no loss (PyTorch cross-entropy ignore_index)


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str) -> Any:
    """Load a Hugging Face tokenizer folder (fast implementation where available), once
    per process.

    Raises:
        ConfigError: the folder cannot be loaded as a tokenizer.
    """
    import os

    from transformers import AutoTokenizer

    # A local folder only (like --model): a missing path would otherwise be tried as a
    # hub id, with retries and a network error instead of "not found".
    if not os.path.exists(path):
        raise ConfigError(f"--tokenizer {path}: no such folder")
    if os.path.isfile(path):
        raise ConfigError(f"--tokenizer {path}: a file, not a tokenizer folder (give the folder holding tokenizer.json)")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises OSError/ValueError/... for bad folders
        raise ConfigError(f"cannot load tokenizer from {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    # Documents are longer than the model's context before packing: silence the
    # "sequence length is longer than the specified maximum" warning.
    tok.model_max_length = 1 << 62
    return tok


@dataclass(frozen=True)
class SpecialTokens:
    """What is added around every document, and the pad id used for padding.

    ``bos_id``/``eos_id`` are ``None`` when not added. ``pad_id`` is never the EOS id:
    the tokenizer's pad token when it has one that differs from EOS, else its unk token,
    else 0 (see :func:`choose_pad_id`).
    """

    bos_id: int | None
    eos_id: int | None
    pad_id: int


def tokenizer_adds(tokenizer: Any) -> tuple[bool, bool]:
    """Whether ``tokenizer(text)`` adds BOS and EOS by itself (its convention), found by
    encoding a probe with and without special tokens."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    adds_bos = bos is not None and len(full) > len(plain) and full[0] == bos
    adds_eos = eos is not None and len(full) > len(plain) and full[-1] == eos
    return adds_bos, adds_eos


def choose_pad_id(tokenizer: Any) -> int:
    """The pad id: the tokenizer's pad token unless it is missing or equal to EOS
    (padding with EOS makes real EOS tokens look like padding), then its unk token,
    then 0. Padded positions always get label -100, whatever the id."""
    eos = tokenizer.eos_token_id
    for cand in (tokenizer.pad_token_id, tokenizer.unk_token_id):
        if cand is not None and cand != eos:
            return int(cand)
    return 0 if eos != 0 else 1


def special_tokens(tokenizer: Any, add_bos: bool | None, add_eos: bool | None) -> SpecialTokens:
    """Decide BOS/EOS per document.

    BOS follows the tokenizer's convention (LLaMA-1/2, Mistral add it; SmolLM2, Qwen do
    not) unless forced. EOS is added by default whenever the tokenizer has an EOS
    token, even when the tokenizer does not add it itself (LLaMA-3 style): packed
    documents must be separated by an end-of-text token.

    Raises:
        ConfigError: BOS/EOS forced on but the tokenizer has no such token.
    """
    adds_bos, _ = tokenizer_adds(tokenizer)
    want_bos = adds_bos if add_bos is None else add_bos
    want_eos = tokenizer.eos_token_id is not None if add_eos is None else add_eos
    if want_bos and tokenizer.bos_token_id is None:
        raise ConfigError("--add-bos: the tokenizer has no BOS token")
    if want_eos and tokenizer.eos_token_id is None:
        raise ConfigError("--add-eos: the tokenizer has no EOS token")
    return SpecialTokens(
        bos_id=int(tokenizer.bos_token_id) if want_bos else None,
        eos_id=int(tokenizer.eos_token_id) if want_eos else None,
        pad_id=choose_pad_id(tokenizer),
    )


@functools.lru_cache(maxsize=16)
def special_tokens_for(tokenizer_path: str, add_bos: bool | None, add_eos: bool | None) -> SpecialTokens:
    """:func:`special_tokens` of the tokenizer at ``tokenizer_path`` (cached per process)."""
    return special_tokens(load_tokenizer(tokenizer_path), add_bos, add_eos)


def encode_texts(tokenizer_path: str, add_bos: bool | None, add_eos: bool | None, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, with BOS/EOS per :func:`special_tokens`.

    This is the built-in ``cpt_tokenize_fn`` (as ``functools.partial(encode_texts,
    path, add_bos, add_eos)``): one batched call to the fast tokenizer.
    """
    tok = load_tokenizer(tokenizer_path)
    sp = special_tokens_for(tokenizer_path, add_bos, add_eos)
    backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        # The Rust tokenizer without offsets: what tok(texts) does, minus its Python
        # BatchEncoding overhead and the offset computation.
        ids = [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    else:
        ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    head = [sp.bos_id] if sp.bos_id is not None else []
    tail = [sp.eos_id] if sp.eos_id is not None else []
    if head or tail:
        ids = [head + x + tail for x in ids]
    return ids


def spans_to_labels(ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """Labels for ``ids``: the id where the token's characters overlap a trained span
    ``[start, end)``, else -100.

    Offsets are the tokenizer's ``offset_mapping`` (character ranges). A token that
    straddles a boundary (its characters partly in a trained span) is trained, so every
    trained character is predicted exactly once and nothing is shifted. Zero-width
    tokens get the mask of the character at their position.
    """
    labels = [IGNORE] * len(ids)
    if not spans:
        return labels
    j = 0
    spans = sorted(spans)
    for i, (start, end) in enumerate(offsets):
        if end == start:
            end = start + 1
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        k = j
        while k < len(spans) and spans[k][0] < end:
            if spans[k][1] > start:
                labels[i] = int(ids[i])
                break
            k += 1
    return labels


def encode_with_spans(tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Tokenize ``text`` once (no added special tokens) and derive labels from the
    character offsets of the trained ``spans``. Returns ``(ids, labels, offsets)``.

    Raises:
        ConfigError: the tokenizer is not a fast tokenizer (no offset mapping).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("loss masks need character offsets: use a fast (tokenizer.json) tokenizer")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    return ids, spans_to_labels(ids, offsets, spans), offsets


def encode_source_target(
    tokenizer_path: str, add_bos: bool | None, add_eos: bool | None, pairs: Sequence[tuple[str, str]]
) -> list[tuple[list[int], list[int]]]:
    """The seed's ``{source, target}`` rows: ``source + target`` tokenized once, the
    source's tokens masked (-100) using character offsets, BOS/EOS as for text.

    Returns ``[(input_ids, labels)]``; EOS is trained, BOS is not.
    """
    tok = load_tokenizer(tokenizer_path)
    sp = special_tokens_for(tokenizer_path, add_bos, add_eos)
    out = []
    for source, target in pairs:
        text = source + target
        ids, labels, _ = encode_with_spans(tok, text, [(len(source), len(text))])
        if sp.bos_id is not None:
            ids, labels = [sp.bos_id] + ids, [IGNORE] + labels
        if sp.eos_id is not None:
            ids, labels = ids + [sp.eos_id], labels + [sp.eos_id]
        out.append((ids, labels))
    return out
