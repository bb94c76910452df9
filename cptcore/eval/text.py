"""Bits per byte of a model on raw text, with the model's own tokenizer (``cpt eval --text``).

Each document is tokenized the way ``cpt prepare pretrain`` does it (the same BOS/EOS
convention, :func:`cptcore.data.tokenize.encode_texts`), and every token after the first
is scored once: the first token of a document has no context, exactly as the first token
of a prepared row is never predicted. Bytes per token follow
:mod:`cptcore.data.token_bytes`, so on the same documents, each in a row of its own, the
bpb here equals the bpb of :func:`cptcore.eval.prepared.evaluate_prepared`.

**Sliding windows.** A document longer than ``max_length`` tokens is scored in windows
of ``max_length`` tokens starting every ``stride`` tokens (``1 <= stride < max_length``,
default ``max_length // 2``): window ``k`` covers tokens ``[k*stride, k*stride +
max_length)`` and scores only the targets the previous window did not reach, so every
token is scored exactly once, and every token after the first window sees at least
``max_length - stride`` tokens of context (the method of the Hugging Face "Perplexity
of fixed-length models" guide).

**Full text** (``cpt eval --full-text``): a tokenizer without BOS (SmolLM2, Qwen) leaves
each document's first token unscored, so its bytes are not counted and the byte totals
of two tokenizers differ slightly. With ``--full-text`` each document starts after the
tokenizer's EOS (:func:`full_text_prefix`), every token is scored and the bytes are
exactly the documents' UTF-8 length for every tokenizer (this no longer matches a
prepared row, whose first token is never predicted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from ..errors import ConfigError, DataError
from .bpb import EvalResult, result


@dataclass(frozen=True)
class Window:
    """Tokens ``[begin, end)`` of document ``doc`` go in; targets ``[first, end)`` are
    scored (``begin < first <= end``)."""

    doc: int
    begin: int
    end: int
    first: int


def windows(n: int, max_length: int, stride: int, doc: int = 0) -> list[Window]:
    """The windows of a document of ``n`` tokens (none when ``n < 2``): targets
    ``1..n-1`` each scored in exactly one window.

    Raises:
        ConfigError: ``max_length < 2`` or ``stride`` outside ``[1, max_length)``.
    """
    if max_length < 2:
        raise ConfigError(f"--max-length must be at least 2, got {max_length}")
    if not 1 <= stride < max_length:
        raise ConfigError(f"--stride must be in [1, max_length) = [1, {max_length}), got {stride}")
    out: list[Window] = []
    if n < 2:
        return out
    begin, reached = 0, 1  # reached: first target not yet scored
    while True:
        end = min(begin + max_length, n)
        out.append(Window(doc, begin, end, max(reached, begin + 1)))
        reached = end
        if end == n:
            return out
        begin += stride


def read_texts(path: str, field: str = "text") -> list[str]:
    """The ``field`` of every record of a JSONL/JSON/Parquet/text file (the readers of
    ``cpt prepare``).

    Raises:
        DataError: missing file, bad line (``FILE:LINE``), a record without text.
    """
    from ..data import readers

    texts = []
    for rec in readers.iter_input(readers.parse_input(path), field):
        if rec.error:
            raise DataError(rec.error, path=rec.path, line=rec.line or None)
        if rec.text is None:
            raise DataError(f"no '{field}' text in this record", path=rec.path, line=rec.line or None)
        texts.append(rec.text)
    if not texts:
        raise DataError("no documents", path=path)
    return texts


def encode_documents(tokenizer_path: str, texts: Sequence[str]) -> tuple[list[list[int]], list[Any]]:
    """Token ids (BOS/EOS as ``cpt prepare pretrain`` adds them) and int32 bytes per token
    of each text."""
    from ..data.token_bytes import byte_table_for, token_bytes
    from ..data.tokenize import encode_texts

    ids = encode_texts(tokenizer_path, None, None, list(texts))
    table = byte_table_for(tokenizer_path)
    return ids, [token_bytes(table, x, t) for x, t in zip(ids, texts)]


def full_text_prefix(tokenizer: Any) -> int | None:
    """The id to put before each document so that its first token is scored too: None
    when the tokenizer adds BOS itself (the first token is already BOS, 0 bytes), else
    its EOS (the end-of-text context lm-evaluation-harness's rolling log-likelihood
    uses), else its BOS.

    Raises:
        ConfigError: the tokenizer has neither EOS nor BOS.
    """
    from ..data.tokenize import tokenizer_adds

    if tokenizer_adds(tokenizer)[0]:
        return None
    for cand in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if cand is not None:
            return int(cand)
    raise ConfigError("--full-text: the tokenizer has no EOS or BOS token to start documents with")


def with_prefix(ids: Sequence[Sequence[int]], nbytes: Sequence[Any], prefix: int | None) -> tuple[list, list]:
    """``[prefix] + ids`` and ``[0] + nbytes`` per document (unchanged when ``prefix`` is None)."""
    import numpy as np

    if prefix is None:
        return list(ids), list(nbytes)
    return ([[prefix, *x] for x in ids],
            [np.concatenate([np.zeros(1, np.int32), np.asarray(nb, dtype=np.int32)]) for nb in nbytes])


def _batches(items: list[Window], tokens_per_batch: int, max_rows: int) -> Iterator[list[Window]]:
    batch: list[Window] = []
    longest = 0
    for w in items:
        n = w.end - w.begin
        if batch and (max(longest, n) * (len(batch) + 1) > tokens_per_batch or len(batch) >= max_rows):
            yield batch
            batch, longest = [], 0
        batch.append(w)
        longest = max(longest, n)
    if batch:
        yield batch


def score_documents(model: Any, ids: Sequence[Sequence[int]], nbytes: Sequence[Any], *, max_length: int,
                    stride: int | None = None, batch_tokens: int | None = None, pad_id: int = 0,
                    device: Any = None) -> EvalResult:
    """Summed NLL over every scored token of ``ids`` under ``model``.

    Args:
        model: a causal LM (``model(input_ids, attention_mask, position_ids).logits``).
        ids: token ids of each document (``[n_i]``).
        nbytes: int bytes per token of each document (``[n_i]``).
        max_length: tokens per window (the model's context to use).
        stride: window step (default ``max_length // 2``), see the module docstring.
        batch_tokens: windows are batched (right-padded) up to this many token slots
            (default ``max_length``); the logits take about ``2 * batch_tokens * vocab * 4``
            bytes.
        pad_id: id put in padded slots (masked out, never scored).

    Returns:
        :class:`~cptcore.eval.bpb.EvalResult`; ``bytes`` = bytes of the scored tokens.

    Raises:
        ConfigError: bad ``max_length``/``stride``/``batch_tokens`` (< 1); ValueError:
            nothing to score.
    """
    import numpy as np
    import torch

    from ..train.strategy import token_loss_sum

    if batch_tokens is not None and batch_tokens < 1:
        raise ConfigError(f"batch_tokens must be >= 1 (or None: max_length), got {batch_tokens}")
    stride = max_length // 2 if stride is None else stride
    items = [w for d, x in enumerate(ids) for w in windows(len(x), max_length, stride, d)]
    items.sort(key=lambda w: w.end - w.begin)
    device = device or next(model.parameters()).device
    nll, tokens, total_bytes = 0.0, 0, 0
    for nb in nbytes:
        total_bytes += int(np.asarray(nb, dtype=np.int64)[1:].sum())
    with torch.no_grad():
        for batch in _batches(items, max_length if batch_tokens is None else batch_tokens, 64):
            S = max(w.end - w.begin for w in batch)
            inp = torch.full((len(batch), S), pad_id, dtype=torch.long)
            lab = torch.full((len(batch), S), -100, dtype=torch.long)
            att = torch.zeros((len(batch), S), dtype=torch.long)
            for i, w in enumerate(batch):
                seg = torch.as_tensor(list(ids[w.doc][w.begin:w.end]), dtype=torch.long)
                inp[i, : len(seg)] = seg
                att[i, : len(seg)] = 1
                lab[i, w.first - w.begin : len(seg)] = seg[w.first - w.begin :]
            pos = torch.arange(S).expand(len(batch), S)
            logits = model(input_ids=inp.to(device), attention_mask=att.to(device), position_ids=pos.to(device),
                           use_cache=False).logits
            nll += float(token_loss_sum(logits, lab))
            tokens += int((lab[:, 1:] != -100).sum())
    return result(nll, tokens, total_bytes)
