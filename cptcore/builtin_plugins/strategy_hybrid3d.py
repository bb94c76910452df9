"""Built-in strategy ``hybrid3d`` (alias ``3d``): ColossalAI's ``HybridParallelPlugin``,
data x pipeline x tensor (x sequence) parallelism with optional ZeRO-1/2 over the data
axis (Megatron-LM: Shoeybi et al. 2019 for TP, Narayanan et al. 2021 for 1F1B PP;
Korthikanti et al. 2022 for sequence parallelism).

* ``tp_size``: tensor parallel (attention heads and MLP columns split; ShardFormer's
  LLaMA policy).
* ``pp_size``: pipeline parallel through ``booster.execute_pipeline`` (1F1B) with
  ``num_microbatches`` pipeline micro-batches per training micro-batch;
  :class:`~cptcore.train.sharded.PipelineStrategy` keeps the loop's token-weighted
  loss, gradient accumulation and LR schedule.
* ``sp_size`` / ``sequence_parallelism_mode``: ``split_gather``/``ring`` inside the TP
  group, ``all_to_all`` on its own axis; ``ring_attn`` needs flash attention. On CPU
  ``split_gather`` runs through the compat patch ``shardformer.gloo_list_collectives``
  (gloo lacks the list forms of ``reduce_scatter``/``all_to_all`` that ShardFormer
  calls, but has ``reduce_scatter_tensor``/``all_to_all_single``) and trains exactly as
  tp-only; ``ring`` is refused on CPU (gradients about 1 % off tp-only's, unexplained)
  and ``all_to_all`` everywhere (gradients sp_size times too large with our
  whole-sequence loss).
* ``zero_stage``: 0, 1 or 2 over the data-parallel axis (ColossalAI: at most 1 with
  pipeline parallelism; ZeRO refuses fp32).

Logits are gathered over the TP group (``parallel_output=False``) so the loop's loss
sees the whole vocabulary. LoRA (peft built before ``boost``) with ``tp_size=1`` and ``pp_size=1``; refused with
``tp_size > 1`` (``enable_lora`` asserts ``tp_size == 1``) or ``pp_size > 1`` (the
pipeline policy cannot find the decoder inside a PeftModel), and DoRA. Refused: embedding noise with
``pp_size > 1`` (the embedding lives on the first stage only and the per-sample lengths
NEFTune needs do not cross stages) or ``tp_size > 1`` (TP ranks would draw different
noise for the same activations).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..specs import Capabilities, StrategySpec
from ..train.parallel import check_microbatches, check_model, check_precision, make_layout
from ..train.sharded import PipelineStrategy, ShardedStrategy, plugin_max_norm

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass(frozen=True)
class Hybrid3DOptions:
    """Options of ``strategy: {name: hybrid3d, ...}`` (``HybridParallelPlugin``'s names)."""

    tp_size: int = 1
    pp_size: int = 1
    sp_size: int | None = None  # all_to_all / ring_attn only
    sequence_parallelism_mode: str | None = None  # None | split_gather | ring | all_to_all | ring_attn
    zero_stage: int = 0  # 0 | 1 | 2 over the data-parallel axis (<= 1 with pp_size > 1)
    num_microbatches: int | None = None  # pipeline micro-batches per micro-batch; default pp_size
    enable_fused_normalization: bool = False  # apex/fused RMSNorm kernels (GPU)
    enable_flash_attention: bool = False  # flash attention kernels (GPU)
    enable_jit_fused: bool = False
    parallel_output: bool = False  # keep logits vocab-sharded over TP (our loss needs them gathered)
    initial_scale: float = 2.0**16  # fp16 loss scale start
    zero_bucket_size_in_m: int = 12
    overlap_communication: bool = True  # forced off on CPU
    cpu_offload: bool = False  # ZeRO optimizer offload
    make_vocab_size_divisible_by: int = 64


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sizes(opts: Hybrid3DOptions) -> tuple[int, int, int | None, str | None]:
    return opts.tp_size, opts.pp_size, opts.sp_size, opts.sequence_parallelism_mode


def validate_hybrid3d(options: Hybrid3DOptions | None, config: "RunConfig", world_size: int, model_config) -> None:
    """Pure checks (no process group): layout divides the world, micro-batching, ZeRO
    stage vs pipeline, precision, model shape (LoRA and noise: :func:`capabilities`)."""

    opts = options or Hybrid3DOptions()
    name = config.strategy.name
    tp, pp, sp, mode = _sizes(opts)
    layout = make_layout(name, world_size, tp=tp, pp=pp, sp=sp, sp_mode=mode)
    if opts.zero_stage not in (0, 1, 2):
        raise ConfigError(f"{name}: zero_stage must be 0, 1 or 2, got {opts.zero_stage}")
    if pp > 1 and opts.zero_stage > 1:
        raise ConfigError(f"{name}: zero_stage={opts.zero_stage} with pp_size={pp}: ColossalAI allows ZeRO stage 0 or 1 with pipeline parallelism")
    if opts.num_microbatches is not None and pp == 1:
        raise ConfigError(f"{name}: num_microbatches is for pipeline parallelism; set pp_size > 1 or drop it")
    check_microbatches(name, pp, opts.num_microbatches, config.training.micro_batch_size)
    if opts.zero_stage > 0:
        check_precision(name, config.strategy.precision, ("bf16", "fp16"), f"ZeRO stage {opts.zero_stage} under hybrid parallelism")
    if mode == "all_to_all":
        # measured with cpt train on 2 gloo ranks, tiny LLaMA, fp32: the first loss equals
        # tp-only's, the gradient norm is exactly 2.00x (2.958 vs 1.479)
        raise ConfigError(f"{name}: sequence_parallelism_mode=all_to_all would train with gradients sp_size times too large "
                          f"(every sp rank computes the loss over the whole gathered sequence and ColossalAI then sums "
                          f"gradients over the sp group); use split_gather (inside TP)")
    if mode == "ring" and not _has_cuda():
        raise ConfigError(f"{name}: sequence_parallelism_mode=ring on CPU: its gradients differ from tp-only ones by "
                          f"about 1% in fp32 on the same batches (measured, unexplained; split_gather matches exactly); "
                          f"use split_gather")
    if mode == "ring_attn" and not opts.enable_flash_attention:
        raise ConfigError(f"{name}: sequence_parallelism_mode=ring_attn needs enable_flash_attention=true (GPU with flash-attn)")
    check_model(name, model_config, tp=tp, pp=pp, sp=layout.sp, sp_mode=mode)


def capabilities(options: Hybrid3DOptions | None) -> Capabilities:
    """LoRA only with tp_size=pp_size=1, no DoRA; no embedding noise with ``pp_size > 1`` or ``tp_size > 1``; a pipeline
    when ``pp_size > 1``."""
    opts = options or Hybrid3DOptions()
    why = {"dora": "DoRA is not tested under ShardFormer (only LoRA and rsLoRA with tp_size=1, pp_size=1); "
                   "use zero2 or ddp"}
    if opts.tp_size > 1:
        why["lora"] = (f"tp_size={opts.tp_size}: ColossalAI's HybridParallelPlugin.enable_lora asserts tp_size == 1 "
                       "(booster/plugin/hybrid_parallel_plugin.py:1516; ShardFormer cannot split peft's LoRA layers)")
    elif opts.pp_size > 1:
        why["lora"] = (f"pp_size={opts.pp_size}: the LLaMA pipeline policy takes the decoder as self.model.model "
                       "(shardformer/policies/llama.py:313,340), which on a PeftModel is the LlamaForCausalLM, not "
                       "the LlamaModel; use tp_size=1 pp_size=1 (ZeRO over dp), zero2 or ddp")
    if opts.pp_size > 1:
        why["noise"] = (f"with pp_size={opts.pp_size} the embedding runs on the first stage only and per-sample "
                        "lengths do not cross stages")
    elif opts.tp_size > 1:
        why["noise"] = f"with tp_size={opts.tp_size} each TP rank would draw different noise for the same activations"
    return Capabilities(lora="lora" not in why, dora=False, noise="noise" not in why, pipeline=opts.pp_size > 1, sharded_checkpoint=True,
                        why_not=why)


def build_hybrid3d(options: Hybrid3DOptions | None, config: "RunConfig") -> ShardedStrategy:
    """Build the hybrid :class:`~cptcore.train.sharded.ShardedStrategy` (or
    :class:`~cptcore.train.sharded.PipelineStrategy` when ``pp_size > 1``)."""
    import torch
    import torch.distributed as dist
    from colossalai.booster.plugin import HybridParallelPlugin

    opts = options or Hybrid3DOptions()
    on_gpu = torch.cuda.is_available()
    name = config.strategy.name
    if not on_gpu and (opts.enable_flash_attention or opts.enable_fused_normalization):
        raise ConfigError(f"{name}: enable_flash_attention / enable_fused_normalization need CUDA kernels; turn them off on CPU")
    tp, pp, sp, mode = _sizes(opts)
    m = opts.num_microbatches or (pp if pp > 1 else None)
    plugin = HybridParallelPlugin(
        tp_size=tp,
        pp_size=pp,
        sp_size=sp,
        enable_sequence_parallelism=mode is not None,
        sequence_parallelism_mode=mode,
        zero_stage=opts.zero_stage,
        precision=config.strategy.precision,
        num_microbatches=m,
        enable_fused_normalization=opts.enable_fused_normalization,
        enable_flash_attention=opts.enable_flash_attention,
        enable_jit_fused=opts.enable_jit_fused,
        parallel_output=opts.parallel_output,
        initial_scale=opts.initial_scale,
        max_norm=plugin_max_norm(config.optimizer.grad_clip),
        zero_bucket_size_in_m=opts.zero_bucket_size_in_m,
        overlap_communication=opts.overlap_communication and on_gpu,
        cpu_offload=opts.cpu_offload,
        make_vocab_size_divisible_by=opts.make_vocab_size_divisible_by,
    )
    common = dict(
        name=name,
        precision=config.strategy.precision,
        dp_group=plugin.dp_group,
        dp_size=plugin.dp_size,
        dp_rank=dist.get_rank(plugin.dp_group),
        save_master_weights=config.strategy.precision != "fp32",
        gather_dir=Path(config.training.out_dir) / ".gather",
    )
    if pp > 1:
        return PipelineStrategy(plugin, num_microbatches=m, pp_group=plugin.pp_group, **common)
    return ShardedStrategy(plugin, **common)


@hookimpl
def cpt_register_strategies():
    return [
        StrategySpec(
            name="hybrid3d",
            aliases=("3d",),
            build=build_hybrid3d,
            options=Hybrid3DOptions,
            validate=validate_hybrid3d,
            capabilities=capabilities,
            description="HybridParallelPlugin: tensor x pipeline x data (x sequence) parallel, optional ZeRO-1/2",
        )
    ]
