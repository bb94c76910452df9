"""Parallel layout arithmetic, checked before any process group exists.

Pure functions over integers and strings (no torch): the strategy plugins' ``validate``
hooks and ``cpt train --dry-run`` call them so that an impossible layout fails in one
line, e.g. ``hybrid3d: tp(2)·pp(2) = 4 does not divide world size 6``, instead of an
assertion deep inside ColossalAI after minutes of start-up.

The rules mirror ColossalAI 0.5.0's own asserts (``booster/plugin/hybrid_parallel_plugin.py``
``HybridParallelPlugin.__init__``, ``pipeline/schedule/one_f_one_b.py:83-95``,
``shardformer/policies/llama.py``) so they are caught early with our wording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..errors import ConfigError

#: sequence-parallel modes of HybridParallelPlugin (``SUPPORT_SP_MODE``)
SP_MODES = ("split_gather", "ring", "all_to_all", "ring_attn")


@dataclass(frozen=True)
class Layout:
    """How ``world_size`` ranks are split: ``dp * pp * tp * sp == world_size``.

    ``sp`` counts only the ranks added by an independent sequence-parallel axis
    (``all_to_all``/``ring_attn``); ``split_gather``/``ring`` reuse the TP group, so
    ``sp`` is 1 and ``sp_over_tp`` is True.
    """

    world_size: int
    dp: int = 1
    tp: int = 1
    pp: int = 1
    sp: int = 1
    sp_over_tp: bool = False

    def describe(self) -> str:
        sp = f"sp={self.tp} (in TP group)" if self.sp_over_tp else f"sp={self.sp}"
        return f"world={self.world_size}: dp={self.dp} tp={self.tp} pp={self.pp} {sp}"


def _positive(name: str, **values: int | None) -> None:
    for key, value in values.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}: {key} must be a positive integer, got {value!r}")


def make_layout(
    name: str, world_size: int, *, tp: int = 1, pp: int = 1, sp: int | None = None, sp_mode: str | None = None
) -> Layout:
    """The layout of ``world_size`` ranks, or a one-line :class:`ConfigError`.

    Args:
        name: the strategy name, used as the message prefix.
        tp, pp: tensor- and pipeline-parallel sizes.
        sp: sequence-parallel size (only with ``sp_mode`` ``all_to_all``/``ring_attn``).
        sp_mode: ``None`` (no sequence parallelism) or one of :data:`SP_MODES`.

    Raises:
        ConfigError: a size is not positive, ``sp_mode`` is unknown, the mode needs
            ``tp > 1``, or the product does not divide ``world_size``.
    """
    _positive(name, world_size=world_size, tp=tp, pp=pp, sp=sp)
    if sp_mode is not None and sp_mode not in SP_MODES:
        raise ConfigError(f"{name}: sequence_parallelism_mode must be one of {', '.join(SP_MODES)}, got {sp_mode!r}")
    if sp_mode is None and sp not in (None, 1):
        raise ConfigError(f"{name}: sp_size={sp} needs sequence_parallelism_mode (all_to_all or ring_attn)")
    sp_over_tp = sp_mode in ("split_gather", "ring")
    if sp_over_tp and tp < 2:
        raise ConfigError(f"{name}: sequence_parallelism_mode={sp_mode} runs inside the TP group and needs tp_size > 1")
    sp_axis = 1 if (sp_over_tp or sp is None) else sp
    product = tp * pp * sp_axis
    if world_size % product:
        terms = [f"tp({tp})", f"pp({pp})"] + ([f"sp({sp_axis})"] if sp_axis > 1 else [])
        raise ConfigError(f"{name}: {'·'.join(terms)} = {product} does not divide world size {world_size}")
    return Layout(world_size, world_size // product, tp, pp, sp_axis, sp_over_tp)


def check_microbatches(name: str, pp: int, num_microbatches: int | None, micro_batch_size: int) -> int:
    """Pipeline micro-batching: each training micro-batch of ``micro_batch_size`` rows
    is cut into ``num_microbatches`` pipeline micro-batches (1F1B schedule).

    Returns:
        the number of pipeline micro-batches (``num_microbatches``, default ``pp``).

    Raises:
        ConfigError: fewer micro-batches than stages (``one_f_one_b.py:93``) or a
            micro-batch size they do not divide (``one_f_one_b.py:83``).
    """
    if pp <= 1:
        return num_microbatches or 1
    m = num_microbatches if num_microbatches is not None else pp
    _positive(name, num_microbatches=m)
    if m < pp:
        raise ConfigError(f"{name}: num_microbatches ({m}) must be >= pp_size ({pp}) for the 1F1B pipeline schedule")
    if micro_batch_size % m:
        raise ConfigError(
            f"{name}: training.micro_batch_size ({micro_batch_size}) must be a multiple of num_microbatches ({m}); "
            f"each micro-batch is split across the pipeline"
        )
    return m


def check_precision(name: str, precision: str, allowed: Iterable[str], why: str = "") -> None:
    """Raise :class:`ConfigError` when the plugin cannot train in ``precision``."""
    allowed = tuple(allowed)
    if precision not in allowed:
        reason = f" ({why})" if why else ""
        raise ConfigError(
            f"{name}: precision {precision} is not supported{reason}; use one of {', '.join(allowed)} "
            f"(--set strategy.precision=bf16)"
        )


def check_model(name: str, model_config: Mapping[str, Any] | None, *, tp: int = 1, pp: int = 1, sp: int = 1,
                sp_mode: str | None = None) -> None:
    """Shape rules of ColossalAI's LLaMA sharding policy.

    Args:
        model_config: ``num_attention_heads``, ``num_key_value_heads``,
            ``num_hidden_layers`` (a HF ``config.json`` mapping); ``None`` skips the check.

    Raises:
        ConfigError: heads (query or key/value) not divisible by ``tp`` (by ``tp·sp``
            under ``all_to_all``), or layers not divisible by ``pp``.
    """
    if not model_config:
        return
    heads = model_config.get("num_attention_heads")
    kv = model_config.get("num_key_value_heads") or heads
    layers = model_config.get("num_hidden_layers")
    split = tp * (sp if sp_mode == "all_to_all" else 1)
    label = f"tp({tp})" if split == tp else f"tp({tp})·sp({sp})"
    for what, count in (("attention heads", heads), ("key/value heads", kv)):
        if count is not None and count % split:
            raise ConfigError(f"{name}: {count} {what} are not divisible by {label}")
    if layers is not None and pp > 1 and layers % pp:
        raise ConfigError(f"{name}: {layers} layers are not divisible by pp({pp})")


def check_combination(name: str, *, lora: bool = False, dora: bool = False, noise: bool = False,
                      freeze: bool = False, refuse: Mapping[str, str] | None = None) -> None:
    """Refuse a feature combination the strategy cannot train, in one line.

    Args:
        refuse: feature (``"lora"``, ``"dora"``, ``"noise"``, ``"freeze"``) -> reason, for the
            features this strategy configuration refuses.
    """
    wanted = {"lora": lora, "dora": dora, "noise": noise, "freeze": freeze}
    labels = {"lora": "LoRA", "dora": "DoRA (lora.use_dora)", "noise": "embedding noise (NEFTune)", "freeze": "training.freeze"}
    for key, reason in (refuse or {}).items():
        if wanted.get(key):
            raise ConfigError(f"{name}: {labels[key]} is not supported: {reason}")
