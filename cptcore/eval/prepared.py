"""Evaluating a model on a prepared folder (``cpt prepare`` output): the same token
loss as training, plus bits per byte from the ``label_bytes`` column.

This is what ``cpt train`` runs per named eval set (``eval/NAME/...`` metrics), and what
a Trainer's ``evaluate()`` calls once per set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from .bpb import EvalResult, result

LABEL_BYTES = "label_bytes"


def _open(dataset: Any) -> tuple[Any, bool]:
    """``(dataset in numpy format with label_bytes when present, has_bytes)``."""
    from ..train.data import REQUIRED_COLUMNS, open_dataset

    ds = open_dataset(Path(dataset)) if isinstance(dataset, (str, Path)) else dataset
    has = LABEL_BYTES in ds.column_names
    cols = [*REQUIRED_COLUMNS, LABEL_BYTES] if has else list(REQUIRED_COLUMNS)
    return ds.with_format("numpy", columns=cols), has


def evaluate_prepared(
    model: Any,
    dataset: Any,
    *,
    micro_batch_size: int = 4,
    pad_id: int | None = None,
    block_mask: bool = True,
    mask_dtype: Any = None,
    limit: int | None = None,
    device: Any = None,
    forward: Callable[[Any, dict], Any] | None = None,
    dp_size: int = 1,
    dp_rank: int = 0,
    reduce: Callable[[Sequence[float]], Sequence[float]] | None = None,
) -> EvalResult:
    """Token-summed NLL, token count and bytes of a prepared folder under ``model``.

    Scored positions are exactly those of the training loss
    (:func:`cptcore.train.strategy.token_loss_sum`: ``labels[:, 1:] != -100`` after the
    causal shift), and each row's ``label_bytes`` counts the bytes of exactly those tokens
    (:mod:`cptcore.data.token_bytes`), so ``bpb`` is the training objective in bits per
    byte.

    Args:
        model: a causal LM (called as ``model(input_ids=, position_ids=, attention_mask=,
            use_cache=False).logits`` unless ``forward`` is given); left in the mode it
            was in.
        dataset: a prepared folder path, or an opened ``datasets.Dataset`` of its rows.
        micro_batch_size, pad_id, block_mask, mask_dtype: as
            :func:`cptcore.train.data.collate` (``block_mask``: block-causal
            ``attention_mask`` from ``position_ids`` so packed documents stay apart).
        limit: at most this many micro-batches per rank (None: every row).
        device: where batches go (default: the model's first parameter's device).
        forward: ``forward(model, batch) -> logits [B, S, V]`` (a strategy's forward).
        dp_size, dp_rank: this rank's share of the rows (rows split as in training eval).
        reduce: sums ``[nll, tokens, bytes, unknown_rows]`` over ranks (e.g. an
            all-reduce over the data-parallel group); None: this process only.

    Returns:
        :class:`~cptcore.eval.bpb.EvalResult` (``bytes``/``bpb`` None for folders
        prepared before ``label_bytes`` existed).

    Raises:
        DataError: not a prepared folder, no rows; ValueError: no label tokens.
    """
    import numpy as np
    import torch

    from ..train.data import collate, rank_batches
    from ..train.strategy import count_label_tokens, token_loss_sum

    ds, has_bytes = _open(dataset)
    if device is None:
        device = next(model.parameters()).device
    if forward is None:
        def forward(m: Any, batch: dict) -> Any:
            kwargs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids", "attention_mask")}
            return m(**kwargs, use_cache=False).logits
    nll, tokens, nbytes, unknown = 0.0, 0, 0, 0
    with torch.no_grad():
        for idx in rank_batches(len(ds), micro_batch_size, dp_size, dp_rank, limit):
            rows = [ds[i] for i in idx]
            if has_bytes:
                lb = np.array([int(r[LABEL_BYTES]) for r in rows], dtype=np.int64)
                unknown += int((lb < 0).sum())
                nbytes += int(lb[lb >= 0].sum())
            else:
                unknown += len(rows)
            batch = collate(rows, pad_id, block_mask, mask_dtype)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = forward(model, batch)
            nll += float(token_loss_sum(logits, batch["labels"]))
            tokens += count_label_tokens(batch["labels"])
    sums = [nll, float(tokens), float(nbytes), float(unknown)]
    if reduce is not None:
        sums = list(reduce(sums))
    nll, tokens, nbytes, unknown = sums[0], int(sums[1]), int(sums[2]), int(sums[3])
    return result(nll, tokens, None if unknown else nbytes)
