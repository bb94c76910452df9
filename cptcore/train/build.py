"""Library entry points: build the pieces of a run from a RunConfig and a plugin manager.

A custom trainer (see ``examples/custom_trainer.py``) uses these and writes its own loop;
``cpt train`` (:func:`cptcore.train.loop.train`) uses the same functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config import parse_options
from ..errors import ConfigError

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


def strategy_spec_and_options(config: Any, pm: Any) -> tuple[Any, Any]:
    """The chosen :class:`~cptcore.specs.StrategySpec` and its validated options
    (preset applied under the user's). Cheap; no process group needed.

    Raises:
        RegistryError / ConfigError: unknown strategy or bad option.
    """
    spec = pm.registry("strategies").get(config.strategy.name)
    values = {**dict(spec.preset), **config.strategy.options}
    options = parse_options(spec.options, values, owner=f"strategy '{spec.name}'", config=config, section="strategy")
    return spec, options


def validate_strategy(config: Any, pm: Any, world_size: int | None = None) -> tuple[Any, Any]:
    """Run the strategy's pure-arithmetic ``validate`` before any process group exists."""
    spec, options = strategy_spec_and_options(config, pm)
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    if spec.validate is not None:
        spec.validate(options, config, world, model_config_dict(config.model.path))
    return spec, options


def build_strategy(config: Any, pm: Any) -> Any:
    """Build and set up the :class:`~cptcore.train.strategy.Strategy` (the process group
    must exist: :func:`cptcore.train.launch.init_distributed`)."""
    spec, options = validate_strategy(config, pm)
    strategy = spec.build(options, config)
    strategy.check_supported(
        lora=config.lora.enabled, noise=bool(config.noise.name), freeze=config.training.freeze != "none"
    )
    strategy.setup()
    return strategy


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


def build_model(config: Any, pm: Any) -> Any:
    """``cpt_build_model`` (built-in provider + wrappers such as LoRA), then the freeze
    policy. Seed torch first for reproducible adapter initialisation."""
    from ..registries import call_provider

    if config.lora.enabled and config.training.freeze != "none":
        raise ConfigError("--freeze non-embeddings and lora.enabled exclude each other (use lora.train_embeddings)")
    model = call_provider(pm, "cpt_build_model", config=config)
    apply_freeze(model, config.training.freeze)
    return model


def attach_noise(config: Any, pm: Any, model: Any) -> Any:
    """Attach the configured noise (``noise.name``) to ``model``; returns the handle or None."""
    if not config.noise.name:
        return None
    spec = pm.registry("noise").get(config.noise.name)
    options = parse_options(spec.options, config.noise.options, owner=f"noise '{spec.name}'", config=config, section="noise")
    return spec.attach(model, options)


def build_data(config: Any, tokenizer: Any, dp_size: int, dp_rank: int) -> tuple[Any, Any, list[dict]]:
    """Open the training folders (memory-mapped), check manifests against the tokenizer,
    and make the sampler.

    Returns:
        ``(MixedDataset, MixedSampler, manifests)``.

    Raises:
        ConfigError: no training data; DataError: missing folder/manifest, tokenizer
        mismatch, empty dataset.
    """
    from .data import MixedDataset, MixedSampler, check_sources, open_dataset, parse_source

    if not config.data.train:
        raise ConfigError("no training data (use --data PATH[:WEIGHT] or data.train in the config)")
    sources = [parse_source(s) for s in config.data.train]
    manifests = check_sources(sources, tokenizer)
    for src in [parse_source(s) for s in config.data.eval.values()]:
        check_sources([src], tokenizer)
    datasets = [open_dataset(s.path) for s in sources]
    data = MixedDataset(datasets, [s.weight for s in sources])
    sampler = MixedSampler(data, config.training.micro_batch_size, dp_size, dp_rank,
                           seed=config.training.seed, shuffle=config.data.shuffle)
    return data, sampler, manifests


def accumulation_steps(config: Any, seq_len: int | None, dp_size: int) -> int:
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
