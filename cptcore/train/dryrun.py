"""``cpt train --dry-run``: run the same :func:`~cptcore.train.plan.precheck` as the
run (one code path: every check the run makes before loading weights), then print the
plan, the process layout, parameter counts and a per-rank memory estimate, and exit
without training.

Without ``--data`` the dry run plans anyway (row length assumed); a data folder that is
given must exist and match the tokenizer, as for the run. No process group, no weights:
the model is built on PyTorch's ``meta`` device from its ``config.json`` (LoRA adapters and ``--freeze`` applied the same way training does), so
a 70B model's plan prints in seconds on a laptop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..builtin_plugins.lora import add_lora
from ..model.load import check_model_path
from ..recipes.trainable import apply_trainable, count_params, count_trainable, optimizer_state_note
from .estimate import MemoryEstimate, ModelShape, Plan, estimate, fmt_bytes
from .parallel import Layout
from .plan import Plan as RunPlan
from .plan import precheck
from ..recipes.stages import describe, precheck_stages

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..plugins import CptPluginManager

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
    run: RunPlan | None = None  # what precheck resolved (the run would train exactly this)
    #: trainable elements as the run reports them (``new_rows``: the new rows only;
    #: ``shape.trainable`` counts every ``requires_grad`` element, which optimizer state covers)
    trainable: int | None = None


def world_size(nproc_per_node: int | None, nnodes: int = 1) -> int:
    """Ranks the run would have: ``--nproc-per-node x --nnodes``, else ``$WORLD_SIZE``, else 1."""
    if nproc_per_node:
        return nproc_per_node * max(1, nnodes)
    return int(os.environ.get("WORLD_SIZE", "1"))


def meta_model(config: "RunConfig", pm: "CptPluginManager") -> Any:
    """The configured model (LoRA and freeze applied) on the ``meta`` device: shapes and
    ``requires_grad`` only, no memory, no weights read (an HF folder's ``config.json``,
    or a GGUF file's metadata)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = check_model_path(config.model.path)
    if path.is_file():  # GGUF: read the config from its metadata only, no tensors
        hf_config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=config.model.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=config.model.trust_remote_code)
        if config.lora.enabled:
            model = add_lora(model, config.lora)
    apply_trainable(model, config)
    return model


def plan_dry_run(config: "RunConfig", pm: "CptPluginManager", world: int) -> DryRun:
    """:func:`~cptcore.train.plan.precheck` for ``world`` ranks (data optional), then the
    memory estimate per rank.

    Raises:
        CptError subclasses: whatever the run would refuse before loading weights.
    """
    run = precheck(config, pm, world, need_data=bool(config.data.train), dry_run=True)
    spec, options, lay = run.strategy.spec, run.strategy.options, run.layout
    model = meta_model(run.config, pm)
    total, trainable = count_params(model)
    hf = model.config
    shape = ModelShape(total, trainable, hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.vocab_size,
                       getattr(hf, "intermediate_size", 0) or 0)
    seq, source = (run.seq_len, "data manifest") if run.seq_len else (DEFAULT_SEQ_LEN, "assumed")
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
        loss_chunk_tokens=run.loss_chunk_tokens,
    )
    return DryRun(spec.name, config.strategy.precision, lay, shape, seq, source, plan, estimate(shape, plan),
                  config.model.gradient_checkpointing, run, count_trainable(model, run.config))


def render(result: DryRun, echo: Callable[[str], None] = print) -> None:
    """Print ``result`` as a few lines and a rich table."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    lay, shape = result.layout, result.shape
    echo(f"strategy: {result.strategy} (precision {result.precision})")
    echo(f"layout:   {lay.describe()}")
    trainable = shape.trainable if result.trainable is None else result.trainable
    echo(f"params:   {shape.params:,} total, {trainable:,} trainable{optimizer_state_note(trainable, shape.trainable)}, "
         f"{shape.params - trainable:,} frozen")
    p = result.plan
    echo(f"batch:    micro-batch {p.micro_batch_size} x {result.seq_len} tokens ({result.seq_len_source}); "
         f"attention {p.attention}; gradient checkpointing {'on' if result.gradient_checkpointing else 'off'}; "
         + (f"loss in chunks of {p.loss_chunk_tokens} tokens" if p.loss_chunk_tokens else "loss over the whole micro-batch"))
    for line in result.run.describe() if result.run is not None else ():
        echo(line)
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


def dry_run(config: "RunConfig", pm: "CptPluginManager", nproc_per_node: int | None = None, nnodes: int = 1,
            echo: Callable[[str], None] = print) -> DryRun:
    """``cpt train --dry-run``: :func:`plan_dry_run` then :func:`render`; with
    ``stages:`` one line per stage first, and the estimate of the first stage to run."""
    if config.stages:
        recipe = precheck_stages(config, pm, world_size(nproc_per_node, nnodes), dry_run=True)
        for line in describe(recipe):
            echo(line)
        todo = [s for s in recipe.stages if not s.finished]
        if not todo:
            echo("dry run: every stage is finished")
            return None  # type: ignore[return-value]
        config = todo[0].config
    result = plan_dry_run(config, pm, world_size(nproc_per_node, nnodes))
    render(result, echo)
    return result
