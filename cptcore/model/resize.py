"""Resize a model's embeddings to an expanded tokenizer (``cpt model resize``).

The new tokenizer must *extend* the model's own one (saved in the model folder): ids
``0 .. len(old)-1`` name the same tokens in both; new tokens take the ids after them.
A model whose embedding has padding rows beyond its tokenizer (rows ``len(old) ..
rows-1``, never produced by the old tokenizer) gets them initialised like new rows.

Initialisation of the rows of new ids (``--init NAME``) is a plugin
(``cpt_register_embedding_inits``; built-ins ``mean`` (default), ``noisy_mean``,
``multivariate``, ``normal``, ``zero``; formulas in :mod:`.embedding_init`). Every
method gets the new tokens' sub-tokens under the old tokenizer (:func:`plan_mean_init`)
and runs once on the input embedding and, when untied, once on the output embedding
(``lm_head``). Sub-tokens are found by running the old tokenizer's BPE model on the new
token's own string (``tokenizers`` ``model.tokenize``, no pre-tokenisation or dummy
prefix), so ``"▁中华"`` gives ``["▁", "中", "华"]`` and a byte-level ``"Ġä¸Ń"`` gives
``["Ġ", "ä¸", "Ń"]``; a piece missing from a byte-fallback SentencePiece vocabulary
gives its ``<0x..>`` byte tokens. ``mean`` is accumulated in float64 and rounded once
to the model's dtype: the initialisation of Chinese-LLaMA-Alpaca and of Hewitt (2021),
restricted to each token's own decomposition.

After every resize :mod:`.resize_check` measures the result (``resize_report.json``)
and refuses an unsafe one.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CptError
from .embedding_init import InitRequest, ResizePlan, mean_rows  # noqa: F401 (mean_rows re-exported)
from .outdir import prepare_out_dir
from ..config import parse_options
from ..plugins import make_plugin_manager
from .resize_check import CheckOptions, REPORT_NAME, measure_after, measure_before, refuse_if_unsafe

if TYPE_CHECKING:
    from ..plugins import CptPluginManager

DEFAULT_INIT = "mean"


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


def init_spec(name: str, pm: CptPluginManager | None = None):
    """The :class:`~cptcore.specs.EmbeddingInitSpec` called ``name``.

    Raises:
        RegistryError: unknown name (with the known names and a did-you-mean).
    """
    if pm is None:
        pm = make_plugin_manager()
    return pm.registry("embedding_inits").get(name)


def parse_init_options(spec: Any, values: dict[str, Any] | None) -> Any:
    """``--init-option KEY=VALUE`` pairs validated against the spec's options class.

    Raises:
        ConfigError: unknown option or wrong type (``parse_options``'s message).
        CptError: a value the options class rejects.
    """
    try:
        return parse_options(spec.options, values or {}, owner=f"embedding init '{spec.name}'")
    except ValueError as exc:  # the options class's own validation
        raise CptError(f"--init-option for '{spec.name}': {exc}") from None


def resize_embeddings(
    model: Any,
    old_tok: Any,
    new_tok: Any,
    init: str = DEFAULT_INIT,
    seed: int = 0,
    init_options: dict[str, Any] | None = None,
    pm: CptPluginManager | None = None,
) -> dict[str, Any]:
    """Resize ``model``'s input/output embeddings in place to ``len(new_tok)`` rows; rows
    ``len(old_tok)..`` are set by the init method ``init`` (a registry name), the old
    rows are copied bit for bit.

    Returns:
        ``{"old_rows", "new_rows", "tied", "init", "init_options", "seed", "seconds"}``.

    Raises:
        RegistryError: unknown ``init``. ConfigError/CptError: bad ``init_options``.
        CptError: ``new_tok`` does not extend ``old_tok`` (see :func:`check_extends`),
            or the method returns rows of the wrong shape.
    """
    import dataclasses
    import sys

    import torch

    spec = init_spec(init, pm)
    options = parse_init_options(spec, init_options)
    if spec.warning:
        print(f"warning: {spec.warning}", file=sys.stderr)
    t0 = time.perf_counter()
    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    check_extends(old_tok, new_tok, old_rows, "given")
    out_emb = model.get_output_embeddings()
    tied = out_emb is not None and out_emb.weight is emb.weight
    plan = plan_mean_init(old_tok, new_tok)
    old_in = emb.weight.detach().clone()
    old_out = out_emb.weight.detach().clone() if (out_emb is not None and not tied) else None
    model.resize_token_embeddings(len(new_tok), mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    start = plan.old_size
    with torch.no_grad():
        for which, old, weight in (
            ("input", old_in, model.get_input_embeddings().weight),
            ("output", old_out, model.get_output_embeddings().weight if old_out is not None else None),
        ):
            if old is None or plan.n_new == 0:
                continue
            rows = spec.init(InitRequest(old, plan, which, generator, options, std))
            if tuple(rows.shape) != (plan.n_new, weight.shape[1]):
                raise CptError(
                    f"embedding init '{spec.name}' returned rows of shape {tuple(rows.shape)}, "
                    f"expected {(plan.n_new, weight.shape[1])}"
                )
            weight[start:] = rows.to(weight.dtype)
    new_out = model.get_output_embeddings()
    return {
        "old_rows": old_rows,
        "new_rows": len(new_tok),
        "tied": tied and new_out is not None and new_out.weight is model.get_input_embeddings().weight,
        "init": spec.name,
        "init_options": dataclasses.asdict(options) if options is not None else {},
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def resize_model_folder(
    model_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    init: str = DEFAULT_INIT,
    overwrite: bool = False,
    *,
    seed: int = 0,
    init_options: dict[str, Any] | None = None,
    check: Any = None,
    pm: CptPluginManager | None = None,
) -> dict[str, Any]:
    """Load the model in ``model_dir`` (its dtype kept), resize it to the tokenizer in
    ``tokenizer_dir``, run the safety check (:mod:`.resize_check`, options ``check``, a
    :class:`~cptcore.model.resize_check.CheckOptions`), write
    ``out_dir/resize_report.json`` and, when safe (or allowed), save safetensors, config
    and that tokenizer to ``out_dir``.

    Returns:
        The :func:`resize_embeddings` summary plus ``"dtype"``, ``"out"`` and
        ``"check"`` (the safety report).

    Raises:
        CptError: a folder lacks a model or tokenizer, a mismatch (:func:`check_extends`),
            ``out_dir`` not empty without ``overwrite``, or an unsafe result (only the
            report is written then).
        RegistryError: unknown ``init``.
    """
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    check = check or CheckOptions()
    mdir, tdir = Path(model_dir), Path(tokenizer_dir)
    if not (mdir / "config.json").is_file():
        raise CptError(f"no model in {mdir} (config.json missing)")
    parse_init_options(init_spec(init, pm), init_options)  # before the slow load
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
    t0 = time.perf_counter()
    before = measure_before(model, old_tok, check)
    summary = resize_embeddings(model, old_tok, new_tok, init=init, seed=seed, init_options=init_options, pm=pm)
    report = measure_after(model, old_tok, new_tok, before, check)
    report["seconds"] = round(time.perf_counter() - t0 - summary["seconds"], 2)
    summary.update(dtype=str(model.dtype).replace("torch.", ""), out=str(out), check=report)
    report_path = out / REPORT_NAME
    doc = {"resize": {k: v for k, v in summary.items() if k != "check"}, **report}
    report_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    refuse_if_unsafe(report, check, report_path)
    model.save_pretrained(out, safe_serialization=True)
    new_tok.save_pretrained(out)
    return summary
