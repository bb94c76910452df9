"""The parts of a run that the :class:`~cptcore.train.trainer.Trainer` builds from a
:class:`~cptcore.train.plan.Plan`: model (with the freeze policy), noise, training data.

A custom loop reuses these through the Trainer's ``build_*`` methods (see
``examples/custom_trainer.py``); nothing here validates what the precheck validated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..registries import call_provider
from .data import MixedDataset, MixedSampler, open_dataset
from ..recipes.trainable import apply_trainable

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..plugins import CptPluginManager
    from .plan import Choice, Plan

FREEZE_CHOICES = ("none", "non-embeddings")


def model_config_dict(path: str) -> dict | None:
    """``num_attention_heads``/``num_key_value_heads``/``num_hidden_layers`` from an HF
    folder's config.json (None for GGUF or unreadable) - cheap, for strategy validation."""
    p = Path(path) / "config.json"
    if not p.is_file():
        return None
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return {k: cfg.get(k) for k in ("num_attention_heads", "num_key_value_heads", "num_hidden_layers", "hidden_size")}


def apply_freeze(model: Any, freeze: str) -> int:
    """``non-embeddings``: only the input embedding and output head weights keep
    ``requires_grad`` (the warm-up stage after a vocabulary expansion); ``none``: no-op.

    Returns:
        number of trainable parameters (elements).

    Raises:
        ConfigError: unknown value.
    """
    if freeze not in FREEZE_CHOICES:
        raise ConfigError(f"training.freeze: unknown '{freeze}' (valid: {', '.join(FREEZE_CHOICES)})")
    if freeze == "non-embeddings":
        for p in model.parameters():
            p.requires_grad_(False)
        model.get_input_embeddings().weight.requires_grad_(True)
        out = model.get_output_embeddings()
        if out is not None:
            out.weight.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(config: "RunConfig", pm: "CptPluginManager") -> Any:
    """``cpt_build_model`` (built-in provider + wrappers such as LoRA), then the freeze
    policy (:func:`cptcore.recipes.trainable.apply_trainable`). Seed torch first for reproducible adapter initialisation."""
    model = call_provider(pm, "cpt_build_model", config=config)
    apply_trainable(model, config)  # training.trainable, with training.freeze folded in
    return model


def attach_noise(choice: "Choice | None", model: Any) -> Any:
    """Attach the planned noise to ``model``; returns the handle or None."""
    return None if choice is None else choice.spec.attach(model, choice.options)


def open_training_data(plan: "Plan", dp_size: int, dp_rank: int) -> tuple[MixedDataset, MixedSampler]:
    """Open the planned training folders (memory-mapped) and make the sampler that
    ``data.mixing`` names (:func:`cptcore.recipes.mixing.make_sampler`; ``rows``, the
    default, is :class:`MixedSampler`'s order).

    Raises:
        DataError: not an Arrow folder, missing columns, empty.
        ConfigError: a mixing option that does not fit (see ``make_sampler``).
    """
    columns = plan.objective.spec.columns
    data = MixedDataset([open_dataset(s.path, columns) for s in plan.train], [s.weight for s in plan.train])
    t = plan.config.training
    from ..recipes.mixing import make_sampler  # lazy: cycle (mixing -> plan -> this module); data.mixing: rows (MixedSampler's order) | tokens | bucketed
    from .plan import log  # lazy: cycle (plan imports this module)

    sampler = make_sampler(data, data.datasets, [s.path for s in plan.train], [s.repeat for s in plan.train],
                           plan.config.data, t.micro_batch_size, dp_size, dp_rank, seed=t.seed, log=log)
    return data, sampler


def accumulation_steps(config: "RunConfig", seq_len: int | None, dp_size: int) -> int:
    """Micro-batches per optimizer step: ``training.accumulation_steps``, or, when
    ``training.global_batch_tokens`` is set, ``ceil(tokens / (micro_batch * seq_len * dp))``.

    Raises:
        ConfigError: non-positive values, or a token budget without a known row length.
    """
    t = config.training
    if t.micro_batch_size < 1:
        raise ConfigError(f"training.micro_batch_size must be >= 1, got {t.micro_batch_size}")
    if t.global_batch_tokens is None:
        if t.accumulation_steps < 1:
            raise ConfigError(f"training.accumulation_steps must be >= 1, got {t.accumulation_steps}")
        return t.accumulation_steps
    if t.global_batch_tokens < 1:
        raise ConfigError(f"training.global_batch_tokens must be >= 1, got {t.global_batch_tokens}")
    if not seq_len:
        raise ConfigError("training.global_batch_tokens needs max_length in the data manifest")
    per = t.micro_batch_size * seq_len * dp_size
    return max(1, -(-t.global_batch_tokens // per))
