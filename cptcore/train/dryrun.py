"""``cpt train --dry-run``: resolve the config and strategy, print the process layout,
parameter counts and a per-rank memory estimate, and exit without training.

No process group, no weights: the model is built on PyTorch's ``meta`` device from its
``config.json`` (LoRA adapters and ``--freeze`` applied the same way training does), so
a 70B model's plan prints in seconds on a laptop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from .estimate import MemoryEstimate, ModelShape, Plan, estimate, fmt_bytes
from .parallel import Layout, make_layout

DEFAULT_SEQ_LEN = 2048


@dataclass(frozen=True)
class DryRun:
    """What ``--dry-run`` found (also returned to library callers)."""

    strategy: str
    precision: str
    layout: Layout
    shape: ModelShape
    seq_len: int
    seq_len_source: str  # "data manifest" | "assumed"
    plan: Plan
    memory: MemoryEstimate
    gradient_checkpointing: bool = False


def world_size(nproc_per_node: int | None, nnodes: int = 1) -> int:
    """Ranks the run would have: ``--nproc-per-node x --nnodes``, else ``$WORLD_SIZE``, else 1."""
    if nproc_per_node:
        return nproc_per_node * max(1, nnodes)
    return int(os.environ.get("WORLD_SIZE", "1"))


def layout_for(name: str, options: Any, world: int) -> Layout:
    """The layout a strategy's options give ``world`` ranks (data parallel unless the
    options carry ``tp_size``/``pp_size``/``sp_size``)."""
    tp = getattr(options, "tp_size", 1) or 1
    pp = getattr(options, "pp_size", 1) or 1
    sp = getattr(options, "sp_size", None)
    mode = getattr(options, "sequence_parallelism_mode", None)
    return make_layout(name, world, tp=tp, pp=pp, sp=sp, sp_mode=mode)


def meta_model(config: Any, pm: Any) -> Any:
    """The configured model (LoRA and freeze applied) on the ``meta`` device: shapes and
    ``requires_grad`` only, no memory, no weights read (an HF folder's ``config.json``,
    or a GGUF file's metadata)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..model.load import check_model_path
    from .build import apply_freeze

    path = check_model_path(config.model.path)
    if path.is_file():  # GGUF: read the config from its metadata only, no tensors
        hf_config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=config.model.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=config.model.trust_remote_code)
        if config.lora.enabled:
            from ..builtin_plugins.lora import add_lora

            model = add_lora(model, config.lora)
    apply_freeze(model, config.training.freeze)
    return model


def count_params(model: Any) -> tuple[int, int]:
    """``(all, trainable)`` parameter elements; tied weights counted once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable


def sequence_length(config: Any) -> tuple[int, str]:
    """Row length from the training data's manifests, else :data:`DEFAULT_SEQ_LEN`."""
    from .data import parse_source, read_manifest_any, seq_length

    try:
        manifests = [read_manifest_any(parse_source(s).path) for s in config.data.train]
    except Exception:  # noqa: BLE001 - missing data is reported by training, not here
        manifests = []
    length = seq_length(manifests) if manifests else None
    return (length, "data manifest") if length else (DEFAULT_SEQ_LEN, "assumed")


def plan_dry_run(config: Any, pm: Any, world: int) -> DryRun:
    """Validate the strategy for ``world`` ranks and estimate memory per rank.

    Raises:
        ConfigError / RegistryError: unknown strategy or option, impossible layout,
            refused combination (the same checks training runs first).
    """
    from .build import validate_strategy

    spec, options = validate_strategy(config, pm, world_size=world)
    lay = layout_for(spec.name, options, world)
    model = meta_model(config, pm)
    total, trainable = count_params(model)
    hf = model.config
    shape = ModelShape(total, trainable, hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.vocab_size,
                       getattr(hf, "intermediate_size", 0) or 0)
    seq, source = sequence_length(config)
    attention = config.model.attn_implementation if config.model.attn_implementation != "auto" else "sdpa"
    plan = Plan(
        strategy=spec.name, precision=config.strategy.precision, dp=lay.dp, tp=lay.tp, pp=lay.pp,
        sp_in_tp=lay.sp_over_tp, sp=lay.sp, zero_stage=getattr(options, "zero_stage", 0),
        cpu_offload=bool(getattr(options, "cpu_offload", False)),
        shard_param_frac=getattr(options, "shard_param_frac", 1.0),
        offload_optim_frac=getattr(options, "offload_optim_frac", 0.0),
        offload_param_frac=getattr(options, "offload_param_frac", 0.0),
        num_microbatches=getattr(options, "num_microbatches", None) or lay.pp,
        micro_batch_size=config.training.micro_batch_size, seq_len=seq, attention=attention,
        gradient_as_bucket_view=bool(getattr(options, "gradient_as_bucket_view", False)),
    )
    return DryRun(spec.name, config.strategy.precision, lay, shape, seq, source, plan, estimate(shape, plan),
                  config.model.gradient_checkpointing)


def render(result: DryRun, echo: Callable[[str], None] = print) -> None:
    """Print ``result`` as a few lines and a rich table."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    lay, shape = result.layout, result.shape
    echo(f"strategy: {result.strategy} (precision {result.precision})")
    echo(f"layout:   {lay.describe()}")
    frozen = shape.params - shape.trainable
    echo(f"params:   {shape.params:,} total, {shape.trainable:,} trainable, {frozen:,} frozen")
    p = result.plan
    echo(f"batch:    micro-batch {p.micro_batch_size} x {result.seq_len} tokens ({result.seq_len_source}); "
         f"attention {p.attention}; gradient checkpointing {'on' if result.gradient_checkpointing else 'off'}")
    table = Table(title="estimated memory per rank", title_justify="left", box=box.ASCII)
    table.add_column("")
    table.add_column("bytes", justify="right")
    table.add_column("", justify="right")
    for label, value in result.memory.rows():
        table.add_row(label, f"{value:,.0f}", fmt_bytes(value))
    console = Console(width=100, force_terminal=False, color_system=None)
    with console.capture() as cap:
        console.print(table)
    echo(cap.get().rstrip())
    echo("dry run: nothing trained (formulas: docs/strategies.md#memory-estimate)")


def dry_run(config: Any, pm: Any, nproc_per_node: int | None = None, nnodes: int = 1,
            echo: Callable[[str], None] = print) -> DryRun:
    """``cpt train --dry-run``: :func:`plan_dry_run` then :func:`render`."""
    result = plan_dry_run(config, pm, world_size(nproc_per_node, nnodes))
    render(result, echo)
    return result
