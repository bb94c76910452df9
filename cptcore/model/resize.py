"""Resize a model's embeddings to an expanded tokenizer (``cpt model resize``).

The new tokenizer must *extend* the model's own one (saved in the model folder): ids
``0 .. len(old)-1`` name the same tokens in both; new tokens take the ids after them.
A model whose embedding has padding rows beyond its tokenizer (rows ``len(old) ..
rows-1``, never produced by the old tokenizer) gets them initialised like new rows.

Initialisation of the rows of new ids (``--init``):

* ``mean`` (default): the row of a new token is the mean of the rows of its sub-tokens
  under the old tokenizer, computed separately for the input embedding and the output
  embedding (``lm_head``) when they are not tied. Sub-tokens are found by running the
  old tokenizer's BPE model on the new token's own string (``tokenizers`` ``model.tokenize``,
  no pre-tokenisation or dummy prefix), so ``"▁中华"`` gives ``["▁", "中", "华"]`` and a
  byte-level ``"Ġä¸Ń"`` gives ``["Ġ", "ä¸", "Ń"]``; a piece missing from a byte-fallback
  SentencePiece vocabulary gives its ``<0x..>`` byte tokens. The mean is accumulated in
  float64 and rounded once to the model's dtype. This is the initialisation of
  Chinese-LLaMA-Alpaca and of Hewitt (2021), "Initializing new word embeddings for
  pretrained language models", restricted to each token's own decomposition.
* ``normal``: transformers' ``_init_weights`` (``N(0, initializer_range²)``).

**A lone word-boundary sub-token** (``▁`` in SentencePiece, ``Ġ`` in byte-level BPE, i.e.
a sub-token whose text is one space) is left out of the mean whenever the token has
other sub-tokens. It only appears when a word-initial piece such as ``"▁中华"`` has no
``"▁中"`` in the old vocabulary; its row is the most frequent, least specific vector of
the model (it follows every word break in every language), so averaging it in pulls
every word-initial new row toward the same point and makes ``"▁中华"`` and ``"中华"``
start far apart although they differ only by the space. A token that *is* a lone
space keeps it (it is its only sub-token).

Rows of old ids are copied bit for bit, so the model's outputs (logits over the old
ids) on text the old tokenizer encodes identically are unchanged. Tied embeddings stay
tied (one tensor, same storage); the dtype is kept; everything runs on CPU and the mean
is one ``index_add_`` over all new rows (no per-token Python loop over tensors).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CptError
from .outdir import prepare_out_dir

INITS = ("mean", "normal")


@dataclass(frozen=True)
class ResizePlan:
    """New ids and their sub-token ids under the old tokenizer (flattened).

    ``sub_ids[k]`` belongs to new row ``owner[k]`` (0-based among new ids)."""

    old_size: int
    new_size: int
    sub_ids: list[int]
    owner: list[int]


def _is_space_marker(token: str) -> bool:
    return token in ("\u2581", "\u0120")


def check_extends(old_tok: Any, new_tok: Any, model_rows: int, where: str) -> None:
    """Refuse a tokenizer that does not extend the model's own.

    Raises:
        CptError: the new vocabulary is smaller than the model's embedding rows, the
            model has fewer rows than its tokenizer has tokens, or some old id names a
            different token in the new tokenizer (the first one is named).
    """
    old_n, new_n = len(old_tok), len(new_tok)
    if model_rows < old_n:
        raise CptError(f"model has {model_rows} embedding rows but its tokenizer has {old_n} tokens")
    if new_n < model_rows:
        raise CptError(f"target vocabulary {new_n} ({where}) is smaller than the model's {model_rows} embedding rows")
    old_tokens = old_tok.convert_ids_to_tokens(list(range(old_n)))
    new_tokens = new_tok.convert_ids_to_tokens(list(range(old_n)))
    for i, (a, b) in enumerate(zip(old_tokens, new_tokens)):
        if a != b:
            raise CptError(
                f"tokenizer {where} does not extend the model's tokenizer: id {i} is {a!r} in the model's, {b!r} in it"
            )


def plan_mean_init(old_tok: Any, new_tok: Any) -> ResizePlan:
    """Sub-token ids of every new token (see the module docstring for the rule)."""
    old_n, new_n = len(old_tok), len(new_tok)
    old_model = old_tok.backend_tokenizer.model
    added = new_tok.added_tokens_decoder
    sub_ids: list[int] = []
    owner: list[int] = []
    for row, tid in enumerate(range(old_n, new_n)):
        if tid in added:
            ids = old_tok.encode(added[tid].content, add_special_tokens=False)
            toks = old_tok.convert_ids_to_tokens(ids)
        else:
            pieces = old_model.tokenize(new_tok.convert_ids_to_tokens(tid))
            ids, toks = [p.id for p in pieces], [p.value for p in pieces]
        if len(ids) > 1:
            kept = [i for i, t in zip(ids, toks) if not _is_space_marker(t)]
            ids = kept or ids
        if not ids:
            raise CptError(f"new token id {tid} ({new_tok.convert_ids_to_tokens(tid)!r}) has no sub-tokens")
        sub_ids.extend(ids)
        owner.extend([row] * len(ids))
    return ResizePlan(old_n, new_n, sub_ids, owner)


def mean_rows(weight, plan: ResizePlan):
    """Mean of sub-token rows for every new token.

    Args:
        weight: ``[rows, hidden]`` embedding or output matrix (any float dtype); only
            rows ``< plan.old_size`` are read.

    Returns:
        ``[new_size - old_size, hidden]`` tensor in ``weight``'s dtype (float64 sums).
    """
    import torch

    n_new = plan.new_size - plan.old_size
    sub = torch.tensor(plan.sub_ids, dtype=torch.long)
    owner = torch.tensor(plan.owner, dtype=torch.long)
    rows = weight.detach()[sub].to(torch.float64)
    sums = torch.zeros(n_new, weight.shape[1], dtype=torch.float64).index_add_(0, owner, rows)
    counts = torch.bincount(owner, minlength=n_new).to(torch.float64)
    return (sums / counts[:, None]).to(weight.dtype)


def resize_embeddings(model: Any, old_tok: Any, new_tok: Any, init: str = "mean", seed: int = 0) -> dict[str, Any]:
    """Resize ``model``'s input/output embeddings in place to ``len(new_tok)`` rows.

    Returns:
        ``{"old_rows", "new_rows", "tied", "init", "seconds"}``.

    Raises:
        CptError: unknown ``init``, or ``new_tok`` does not extend ``old_tok`` (see
            :func:`check_extends`).
    """
    import torch

    if init not in INITS:
        raise CptError(f"unknown init {init!r} (choose from {', '.join(INITS)})")
    t0 = time.perf_counter()
    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    check_extends(old_tok, new_tok, old_rows, "given")
    out_emb = model.get_output_embeddings()
    tied = out_emb is not None and out_emb.weight is emb.weight
    plan = plan_mean_init(old_tok, new_tok) if init == "mean" else None
    old_out = out_emb.weight.detach().clone() if (plan and out_emb is not None and not tied) else None
    old_in = emb.weight.detach().clone() if plan else None
    torch.manual_seed(seed)
    model.resize_token_embeddings(len(new_tok), mean_resizing=False)
    if plan is not None:
        start = plan.old_size
        with torch.no_grad():
            model.get_input_embeddings().weight[start:] = mean_rows(old_in, plan)
            if old_out is not None:
                model.get_output_embeddings().weight[start:] = mean_rows(old_out, plan)
    new_out = model.get_output_embeddings()
    return {
        "old_rows": old_rows,
        "new_rows": len(new_tok),
        "tied": tied and new_out is not None and new_out.weight is model.get_input_embeddings().weight,
        "init": init,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def resize_model_folder(
    model_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path, init: str = "mean", overwrite: bool = False
) -> dict[str, Any]:
    """Load the model in ``model_dir`` (its dtype kept), resize it to the tokenizer in
    ``tokenizer_dir`` and save safetensors, config and that tokenizer to ``out_dir``.

    Returns:
        The :func:`resize_embeddings` summary plus ``"dtype"`` and ``"out"``.

    Raises:
        CptError: a folder lacks a model or tokenizer, a mismatch (:func:`check_extends`),
            ``out_dir`` not empty without ``overwrite``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mdir, tdir = Path(model_dir), Path(tokenizer_dir)
    if not (mdir / "config.json").is_file():
        raise CptError(f"no model in {mdir} (config.json missing)")
    if init not in INITS:
        raise CptError(f"unknown init {init!r} (choose from {', '.join(INITS)})")
    try:
        old_tok = AutoTokenizer.from_pretrained(mdir)
    except (OSError, ValueError):
        raise CptError(f"no tokenizer in model folder {mdir} (the model's own tokenizer is needed)") from None
    if not tdir.is_dir():  # else tried as a hub id, with retries
        raise CptError(f"no tokenizer in {tdir} (no such folder)")
    try:
        new_tok = AutoTokenizer.from_pretrained(tdir)
    except (OSError, ValueError):
        raise CptError(f"no tokenizer in {tdir}") from None
    model = AutoModelForCausalLM.from_pretrained(mdir, torch_dtype="auto")
    check_extends(old_tok, new_tok, model.get_input_embeddings().weight.shape[0], str(tdir))
    out = prepare_out_dir(out_dir, overwrite)
    summary = resize_embeddings(model, old_tok, new_tok, init=init)
    model.save_pretrained(out, safe_serialization=True)
    new_tok.save_pretrained(out)
    summary.update(dtype=str(model.dtype).replace("torch.", ""), out=str(out))
    return summary
