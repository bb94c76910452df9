"""Strategy subclasses for ColossalAI plugins that own clipping and shard state.

:class:`ShardedStrategy` serves ``zero1``/``zero2``, ``gemini``, ``hybrid3d`` and ``fsdp``:

* clipping happens inside the plugin's optimizer (``max_norm`` passed to the plugin,
  because ZeRO/Gemini gradients do not live in ``param.grad`` and TP norms need a
  cross-rank reduction); :meth:`clip_and_step` steps and reports the pre-clip global
  norm from ``optimizer.get_grad_norm()``;
* :meth:`unwrap` gathers full weights into a fresh Hugging Face module on every rank
  (through the plugin's own unsharded checkpoint writer, so HF parameter names and
  vocabulary un-padding are upstream's) when the boosted module does not already hold
  them.

:class:`PipelineStrategy` adds pipeline parallelism through
``booster.execute_pipeline`` (1F1B), keeping the loop's token-weighted loss contract.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path
from typing import Any, Mapping

from ..errors import CptError
from .strategy import BoosterStrategy, LossFn, inner_optimizer
from .export import is_peft

#: plugins clip with this max_norm when the user disables clipping (0): large enough
#: never to clip, non-zero so that HybridParallel/Gemini still measure the norm.
NO_CLIP = 1e30


def plugin_max_norm(grad_clip: float) -> float:
    """``max_norm`` for a ColossalAI plugin from ``optimizer.grad_clip`` (0 = off)."""
    return grad_clip if grad_clip and grad_clip > 0 else NO_CLIP


def loss_scale(optimizer: Any) -> float:
    """The fp16 dynamic loss scale of a ColossalAI optimizer wrapper (1.0 for bf16/fp32).

    ZeRO, Gemini and the hybrid AMP optimizers measure the gradient norm on the scaled
    gradients, so the reported norm is divided by this. Their mixin attribute is named
    ``mixed_precision_mixin`` (LowLevelZero), ``mixed_precision`` (MixedPrecisionOptimizer)
    or ``mix_precision_mixin`` (Gemini)."""
    for attr in ("mixed_precision_mixin", "mixed_precision", "mix_precision_mixin"):
        mixin = getattr(optimizer, attr, None)
        scale = getattr(mixin, "loss_scale", None) if mixin is not None else None
        if scale is not None:
            return float(scale)
    return 1.0


class ShardedStrategy(BoosterStrategy):
    """A :class:`Strategy` whose plugin clips gradients and may shard parameters.

    Args (besides :class:`Strategy`'s):
        full_params_local: True when every rank's boosted module holds the complete,
            unsharded parameters (ZeRO-1/2), so :meth:`unwrap` needs no gathering.
        gather_dir: folder for the temporary unsharded copy :meth:`unwrap` writes
            (must be visible to every rank; default ``OUT/.gather``).
        save_master_weights: also save this rank's fp32 master parameters (the inner
            optimizer's parameters) beside the checkpoint. ColossalAI's ZeRO and
            mixed-precision checkpoints store only the half-precision working weights
            and rebuild the masters from them on load, which rounds them: the resumed
            trajectory then drifts from the uninterrupted one after its first step.
        strict_load: passed to ``booster.load_model`` (Gemini's sharded writer keeps a
            tied ``lm_head.weight`` its loader then calls unexpected).
    """

    def __init__(self, plugin: Any, *, full_params_local: bool = False, gather_dir: str | Path = ".gather",
                 save_master_weights: bool = False, strict_load: bool = True, **kwargs: Any) -> None:
        super().__init__(plugin, plugin_controls_precision=True, **kwargs)
        self.full_params_local = full_params_local
        self.gather_dir = Path(gather_dir)
        self.save_master_weights = save_master_weights
        self.strict_load = strict_load

    @staticmethod
    def _masters(optimizer: Any) -> list:
        return [p for g in inner_optimizer(optimizer).param_groups for p in g["params"]]

    def save(self, ckpt_dir: str | Path, model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        """:meth:`Strategy.save`, plus ``master/rank{R}.pt`` (fp32 master parameters of
        this rank, in optimizer order) when ``save_master_weights``."""
        import torch
        import torch.distributed as dist

        super().save(ckpt_dir, model, optimizer, lr_scheduler)
        if self.save_master_weights:
            folder = Path(ckpt_dir) / "master"
            folder.mkdir(parents=True, exist_ok=True)
            rank = dist.get_rank() if dist.is_initialized() else 0
            torch.save([p.detach().cpu().clone() for p in self._masters(optimizer)], folder / f"rank{rank}.pt")

    def load(self, ckpt_dir: str | Path, model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        """Inverse of :meth:`save` on boosted objects (same world size and layout).

        Raises:
            CptError: the checkpoint lacks this rank's master weights file or they do
                not match the optimizer's parameters (a different layout).
        """
        import torch
        import torch.distributed as dist

        d = Path(ckpt_dir)
        self.booster.load_model(model, str(d / "model"), strict=self.strict_load)
        self.booster.load_optimizer(optimizer, str(d / "optimizer"))
        if lr_scheduler is not None:
            self.booster.load_lr_scheduler(lr_scheduler, str(d / "lr_scheduler.pt"))
        if not self.save_master_weights:
            return
        rank = dist.get_rank() if dist.is_initialized() else 0
        path = d / "master" / f"rank{rank}.pt"
        if not path.is_file():
            raise CptError(f"{path}: missing master weights for rank {rank} (checkpoint from another world size?)")
        saved = torch.load(path, weights_only=True)
        masters = self._masters(optimizer)
        if len(saved) != len(masters) or any(a.shape != b.shape for a, b in zip(saved, masters)):
            raise CptError(f"{path}: master weights do not match this run's layout ({len(saved)} vs {len(masters)} tensors)")
        with torch.no_grad():
            for dst, src in zip(masters, saved):
                dst.copy_(src.to(dst.device))

    def clip_and_step(self, optimizer: Any, max_norm: float) -> float:
        """Step (the plugin unscales and clips to the ``max_norm`` it was built with);
        return the pre-clip global gradient L2 norm, or NaN if the plugin kept none."""
        scale = loss_scale(optimizer)  # read before step: the scaler may change it
        optimizer.step()
        norm = optimizer.get_grad_norm() if hasattr(optimizer, "get_grad_norm") else None
        if norm is None:
            return math.nan
        return float(norm) / scale

    def unwrap(self, model: Any) -> Any:
        """The trained model as a plain HF module with full weights, on every rank.

        ZeRO-1/2 keep full working parameters on each rank: the boosted module's inner
        module is returned. Otherwise (Gemini chunks, TP/PP shards, FSDP flat params)
        the plugin writes an unsharded checkpoint to :attr:`gather_dir`, and a new
        ``AutoModelForCausalLM.from_config`` module loads it (fp32, CPU). Every rank
        must call this.
        """
        inner = super().unwrap(model)
        if self.full_params_local:
            return inner
        import torch.distributed as dist
        from transformers import AutoModelForCausalLM
        from transformers.modeling_utils import load_sharded_checkpoint

        folder = self.gather_dir
        self.booster.save_model(model, str(folder), shard=True)
        if dist.is_initialized():
            dist.barrier()
        config = getattr(inner, "config", None)
        if config is None:
            raise RuntimeError(f"{self.name}: cannot gather a model without a Hugging Face config")
        fresh = AutoModelForCausalLM.from_config(config)
        fresh.tie_weights()
        if is_peft(inner):  # LoRA: the same adapters, loaded under either naming the plugins write
            fresh = _like_peft(inner, fresh)
            missing = _load_peft_gathered(fresh, Path(folder))
        else:
            missing, _ = load_sharded_checkpoint(fresh, str(folder), strict=False)
        # strict=False only for the tied head the sharded savers leave out; nothing else may be missing
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing:
            raise RuntimeError(f"{self.name}: the gathered checkpoint lacks {len(missing)} weights, e.g. {missing[:3]}")
        fresh.tie_weights()
        if dist.is_initialized():
            dist.barrier()
        if not dist.is_initialized() or dist.get_rank() == 0:
            shutil.rmtree(folder, ignore_errors=True)
        return fresh


class PipelineStrategy(ShardedStrategy):
    """Pipeline parallel (HybridParallelPlugin ``pp_size > 1``) through
    ``booster.execute_pipeline``.

    Each training micro-batch ``[micro_batch_size, seq]`` is cut by the 1F1B schedule
    into ``num_microbatches`` pipeline micro-batches. The schedule divides each
    criterion value by ``num_microbatches`` (``pipeline/schedule/one_f_one_b.py:272``);
    our criterion multiplies it back, so the backward is exactly
    ``loss_sum * normaliser`` as for every other strategy. Gradients accumulate across
    calls until :meth:`clip_and_step`, so the loop's gradient accumulation holds, and
    the loop steps the LR scheduler as for any strategy.

    Args (besides :class:`ShardedStrategy`'s):
        num_microbatches: pipeline micro-batches per training micro-batch.
        pp_group: the pipeline process group (the loss lives on the last stage and is
            summed over this group so every stage reports it).
    """

    def __init__(self, plugin: Any, *, num_microbatches: int, pp_group: Any, **kwargs: Any) -> None:
        super().__init__(plugin, **kwargs)
        self.num_microbatches = num_microbatches
        self.pp_group = pp_group

    def _share_from_last_stage(self, value: Any) -> Any:
        import torch.distributed as dist

        dist.all_reduce(value, group=self.pp_group)
        return value

    def forward_backward(self, model: Any, optimizer: Any, batch: Mapping[str, Any], loss_fn: LossFn,
                         normaliser: float, sync: bool = True) -> Any:
        """One training micro-batch through the pipeline: forward and backward of every
        pipeline micro-batch. Returns this micro-batch's summed token loss (0-dim fp32,
        the same value on every stage)."""
        import torch

        scale = normaliser * self.num_microbatches
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids", "attention_mask", "labels")}

        def criterion(outputs: Any, micro: Mapping[str, Any]) -> Any:
            return loss_fn(outputs.logits, micro)[0] * scale

        # non-final micro-batches skip the shared-parameter and data-parallel gradient
        # sync that execute_pipeline otherwise runs after every call (it would sum the
        # tied embedding's accumulated gradient more than once)
        ctx = contextlib.nullcontext() if sync else self.no_sync(model, optimizer)
        with ctx:
            out = self.booster.execute_pipeline(iter([inputs]), model, criterion, optimizer,
                                                return_loss=True, return_outputs=False)
        loss = out.get("loss")
        if loss is not None and normaliser:
            total = (loss.detach().float() / normaliser).reshape(())
        else:
            total = torch.zeros((), dtype=torch.float32, device=self.device)
        return self._share_from_last_stage(total)

    def forward(self, model: Any, batch: Mapping[str, Any]) -> Any:
        """Forward only (evaluation): logits ``[batch, seq, vocab]`` of the last stage,
        broadcast to every stage so the loop's loss code runs unchanged."""
        import torch
        import torch.distributed as dist

        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids", "attention_mask")}
        with model.no_sync():  # no gradients to synchronise after a forward-only pass
            out = self.booster.execute_pipeline(iter([inputs]), model, lambda o, m: o.logits.new_zeros(()), None,
                                                return_loss=False, return_outputs=True)
        stage = self.plugin.stage_manager
        last = dist.get_global_rank(self.pp_group, stage.num_stages - 1)
        shape = torch.zeros(3, dtype=torch.int64, device=self.device)
        logits = None
        if stage.is_last_stage():
            merged = out["outputs"]  # merged over pipeline micro-batches: a plain mapping
            logits = (merged["logits"] if isinstance(merged, Mapping) else merged.logits).float().contiguous()
            shape.copy_(torch.tensor(logits.shape))
        dist.broadcast(shape, src=last, group=self.pp_group)
        if logits is None:
            logits = torch.empty(*shape.tolist(), dtype=torch.float32, device=self.device)
        dist.broadcast(logits, src=last, group=self.pp_group)
        return logits


def _like_peft(inner: Any, fresh: Any) -> Any:
    """``fresh`` wrapped in the same peft adapters as ``inner`` (a ``PeftModel``)."""
    import copy

    from peft import get_peft_model

    return get_peft_model(fresh, copy.deepcopy(inner.peft_config["default"]))


def _load_peft_gathered(peft_model: Any, folder: Path) -> list[str]:
    """Load a plugin-gathered checkpoint of a peft model into ``peft_model``; returns the
    missing names. Gemini writes the peft module's own names (``base_model.model.`` +
    ``...q_proj.base_layer.weight``); HybridParallel writes the base model's names with
    ``base_layer.`` removed (ColossalAI ``interface/model.py`` ``PeftUnwrapMixin``):
    both are mapped onto the base model's state dict. Shards are read without pickle
    code execution (safetensors, or ``torch.load(weights_only=True)``) and only from
    inside ``folder``."""
    import json

    import torch
    from safetensors.torch import load_file

    index = next((folder / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (folder / n).is_file()), None)
    names = (sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())) if index else
             sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")))
    state: dict[str, Any] = {}
    for name in names:
        path = folder / Path(name).name  # never outside the folder
        part = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                      weights_only=True)
        state.update({k.removeprefix("base_model.model."): v for k, v in part.items()})
    base = peft_model.get_base_model()
    mapped, missing = {}, []
    for key in base.state_dict():
        src = key if key in state else key.replace("base_layer.", "")
        if src in state:
            mapped[key] = state[src]
        else:
            missing.append(key)
    base.load_state_dict(mapped, strict=False)
    return missing
