"""The strategy interface: how the training loop drives a ColossalAI Booster plugin.

A :class:`Strategy` is one plain class, generic over ColossalAI ``Plugin`` objects. A
strategy plugin's ``StrategySpec.build(options, config)`` returns a ``Strategy`` built
around its Booster plugin, changing behaviour with constructor arguments (flags and
callables) or, where a whole step differs (pipeline parallelism), by subclassing and
overriding one method. The loop owns everything else (accumulation, clipping cadence,
LR schedule, logging, checkpoint cadence, resume); it calls, in order::

    strategy.setup()                                # after the process group exists
    opt = strategy.make_optimizer(param_groups, config.optimizer)
    model, opt, sched, _ = strategy.boost(model, opt, make_scheduler)
    for every micro-batch:
        loss_sum = strategy.forward_backward(model, opt, batch, normaliser, sync=last)
    grad_norm = strategy.clip_and_step(opt, max_norm); sched.step(); opt.zero_grad()
    strategy.save(ckpt_dir, model, opt, sched) / strategy.load(...)
    hf_module = strategy.unwrap(model)              # export / eval / generate

Loss contract (token-weighted across micro-batches and ranks): ``normaliser`` is
``dp_size / N`` where ``N`` is the number of unmasked label tokens in the whole
accumulated batch summed over all data-parallel ranks (the loop all-reduces the count
before the first backward). Each micro-batch backpropagates ``loss_sum * normaliser``;
since DDP/ZeRO average gradients over ``dp_size`` ranks the applied gradient is that of
``sum(all token losses) / N`` - not the mean of per-micro-batch means.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Mapping

IGNORE_INDEX = -100


def token_loss_sum(logits: Any, labels: Any) -> Any:
    """Sum of next-token cross-entropy over unmasked label positions.

    Args:
        logits: ``[batch, seq, vocab]`` float (any dtype; computed in fp32).
        labels: ``[batch, seq]`` int64, ``-100`` where masked. Position ``t``'s logits
            predict ``labels[:, t + 1]`` (the usual causal shift, as in HF's
            ``ForCausalLMLoss``).

    Returns:
        0-dim fp32 tensor: the summed loss in nats (divide by the token count for a mean).
    """
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def count_label_tokens(labels: Any) -> int:
    """Number of positions that carry loss after the causal shift (``labels[:, 1:] != -100``)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum().item())


def default_optimizer(param_groups: list[dict], opt_cfg: Any) -> Any:
    """``torch.optim.AdamW`` over ``param_groups`` (each group carries its own
    ``weight_decay``) with ``lr``/``betas``/``eps`` from :class:`cptcore.config.OptimizerConfig`."""
    import torch

    return torch.optim.AdamW(
        param_groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps, foreach=False
    )


class Strategy:
    """A ColossalAI Booster plugin plus how the loop drives it.

    Args:
        plugin: a ``colossalai.booster.plugin.Plugin`` instance (e.g. ``TorchDDPPlugin()``).
        name: the registry name (used in messages: "ddp: LoRA is not supported").
        precision: ``"fp32" | "bf16" | "fp16"``, the compute precision.
        plugin_controls_precision: True when the plugin casts the model itself (ZeRO,
            Gemini, Hybrid take ``precision=`` in their constructor). When False (DDP),
            the strategy runs the forward under ``torch.autocast`` for bf16/fp16 and
            uses a ``torch.amp.GradScaler`` (dynamic loss scaling) for fp16.
        optimizer_factory: ``f(param_groups, OptimizerConfig) -> torch.optim.Optimizer``;
            default :func:`default_optimizer` (Gemini passes one returning HybridAdam).
        dp_group: the data-parallel process group used to sum token counts (``None`` =
            the whole world; hybrid strategies pass their DP group).
        dp_size, dp_rank: data-parallel size/rank for the sampler; default the world's.
        supports_lora, supports_noise, supports_freeze: what the strategy can train;
            :meth:`check_supported` refuses other combinations in one line.
        mixed_precision: passed to ``Booster(mixed_precision=...)`` (rarely needed).

    Subclass and override :meth:`forward_backward` (pipeline parallel through
    ``booster.execute_pipeline``), :meth:`clip_and_step` or :meth:`save`/:meth:`load`
    when a plugin needs it; keep the signatures.
    """

    def __init__(
        self,
        plugin: Any,
        *,
        name: str,
        precision: str = "fp32",
        plugin_controls_precision: bool = False,
        optimizer_factory: Callable[[list[dict], Any], Any] | None = None,
        dp_group: Any = None,
        dp_size: int | None = None,
        dp_rank: int | None = None,
        supports_lora: bool = True,
        supports_noise: bool = True,
        supports_freeze: bool = True,
        mixed_precision: Any = None,
    ) -> None:
        if precision not in ("fp32", "bf16", "fp16"):
            from ..errors import ConfigError

            raise ConfigError(f"{name}: precision must be fp32, bf16 or fp16, got {precision!r}")
        self.plugin = plugin
        self.name = name
        self.precision = precision
        self.plugin_controls_precision = plugin_controls_precision
        self.optimizer_factory = optimizer_factory or default_optimizer
        self.dp_group = dp_group
        self._dp_size = dp_size
        self._dp_rank = dp_rank
        self.supports = {"lora": supports_lora, "noise": supports_noise, "freeze": supports_freeze}
        self.mixed_precision = mixed_precision
        self.booster: Any = None
        self.scaler: Any = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Create the Booster (the process group must exist). Applies the ColossalAI CPU
        compatibility patches and the non-executing checkpoint loaders
        (:mod:`cptcore.compat.safe_load`) first."""
        from ..compat import colossalai_cpu, safe_load

        colossalai_cpu.apply()
        safe_load.apply()  # checkpoint loaders: weights_only=True, index names inside their folder
        from colossalai.booster import Booster

        self.booster = Booster(plugin=self.plugin, mixed_precision=self.mixed_precision)
        if self.precision == "fp16" and not self.plugin_controls_precision:
            import torch

            self.scaler = torch.amp.GradScaler(self.device.type)

    @property
    def device(self) -> Any:
        """The device this rank computes on (``cuda:LOCAL_RANK`` or ``cpu``)."""
        from colossalai.accelerator import get_accelerator

        return get_accelerator().get_current_device()

    @property
    def dp_size(self) -> int:
        if self._dp_size is not None:
            return self._dp_size
        import torch.distributed as dist

        return dist.get_world_size(self.dp_group) if dist.is_initialized() else 1

    @property
    def dp_rank(self) -> int:
        if self._dp_rank is not None:
            return self._dp_rank
        import torch.distributed as dist

        return dist.get_rank(self.dp_group) if dist.is_initialized() else 0

    def check_supported(self, *, lora: bool, noise: bool, freeze: bool) -> None:
        """Raise :class:`~cptcore.errors.ConfigError` (one line) for a combination this
        strategy cannot train, before any heavy work."""
        from ..errors import ConfigError

        for key, wanted in (("lora", lora), ("noise", noise), ("freeze", freeze)):
            if wanted and not self.supports[key]:
                what = {"lora": "LoRA", "noise": "embedding noise", "freeze": "--freeze"}[key]
                raise ConfigError(f"strategy '{self.name}' does not support {what}; use 'ddp' or disable it")

    # ------------------------------------------------------------------ build
    def make_optimizer(self, param_groups: list[dict], opt_cfg: Any) -> Any:
        """The optimizer over ``param_groups`` (see :func:`cptcore.train.optim.param_groups`)."""
        return self.optimizer_factory(param_groups, opt_cfg)

    def boost(
        self,
        model: Any,
        optimizer: Any,
        lr_scheduler_factory: Callable[[Any], Any] | None = None,
        dataloader: Any = None,
    ) -> tuple[Any, Any, Any, Any]:
        """Boost ``model`` and ``optimizer``; then create the LR scheduler on the boosted
        optimizer (FSDP rebuilds the optimizer inside ``boost``).

        Returns:
            ``(model, optimizer, lr_scheduler, dataloader)``; ``lr_scheduler`` is
            ``lr_scheduler_factory(boosted_optimizer)`` (a ``torch.optim.lr_scheduler``
            on the innermost ``torch.optim.Optimizer``) or ``None``.
        """
        model, optimizer, _, dataloader, _ = self.booster.boost(model, optimizer, dataloader=dataloader)
        scheduler = None
        if lr_scheduler_factory is not None:
            scheduler = lr_scheduler_factory(inner_optimizer(optimizer))
        return model, optimizer, scheduler, dataloader

    # ------------------------------------------------------------------ step
    def autocast(self) -> Any:
        """Context for the forward pass: ``torch.autocast`` for bf16/fp16 when the plugin
        does not control precision, otherwise a no-op."""
        if self.precision == "fp32" or self.plugin_controls_precision:
            return contextlib.nullcontext()
        import torch

        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def no_sync(self, model: Any, optimizer: Any) -> Any:
        """Skip gradient all-reduce for a non-final micro-batch where the plugin allows."""
        if self.booster is not None and self.plugin.support_no_sync():
            return self.booster.no_sync(model, optimizer)
        return contextlib.nullcontext()

    def forward(self, model: Any, batch: Mapping[str, Any]) -> Any:
        """Run the model on ``batch`` (keys ``input_ids``, ``position_ids`` and optional
        ``attention_mask``; ``labels`` is not passed so HF computes no mean loss).
        Returns the logits ``[batch, seq, vocab]``."""
        kwargs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids", "attention_mask")}
        with self.autocast():
            return model(**kwargs, use_cache=False).logits

    def forward_backward(
        self, model: Any, optimizer: Any, batch: Mapping[str, Any], normaliser: float, sync: bool = True
    ) -> Any:
        """Forward, token-summed loss, backward of ``loss_sum * normaliser``.

        Args:
            batch: tensors on :attr:`device`: ``input_ids``/``labels``/``position_ids``
                ``[micro_batch, seq]`` int64, optional ``attention_mask``
                ``[micro_batch, 1, seq, seq]`` float (0 / -inf block-diagonal causal).
            normaliser: ``dp_size / N`` (see the module docstring).
            sync: False for micro-batches before the last of an accumulated batch
                (gradient all-reduce skipped where the plugin supports ``no_sync``).

        Returns:
            0-dim fp32 tensor, detached: this rank's summed token loss for the micro-batch.
        """
        ctx = contextlib.nullcontext() if sync else self.no_sync(model, optimizer)
        with ctx:
            logits = self.forward(model, batch)
            loss_sum = token_loss_sum(logits, batch["labels"])
            loss = loss_sum * normaliser
            if self.scaler is not None:
                loss = self.scaler.scale(loss)
                loss.backward()
            else:
                self.booster.backward(loss, optimizer)
        return loss_sum.detach()

    def clip_and_step(self, optimizer: Any, max_norm: float) -> float:
        """Unscale (fp16), clip the global gradient L2 norm to ``max_norm`` (0 = no clip,
        norm still measured), step. Returns the pre-clip global grad norm (float)."""
        import torch

        if self.scaler is not None:
            self.scaler.unscale_(inner_optimizer(optimizer))
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        limit = max_norm if max_norm and max_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, limit, foreach=False)
        if self.scaler is not None:
            self.scaler.step(inner_optimizer(optimizer))
            self.scaler.update()
        else:
            optimizer.step()
        return float(norm)

    # ------------------------------------------------------------------ checkpoint I/O
    def save(self, ckpt_dir: str | Path, model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        """Write ``model/`` and ``optimizer/`` (sharded, through the plugin's checkpoint
        I/O), ``lr_scheduler.pt`` and ``grad_scaler.pt`` (fp16) under ``ckpt_dir``.
        Every rank must call it (sharded strategies gather or write per rank)."""
        import torch

        d = Path(ckpt_dir)
        self.booster.save_model(model, str(d / "model"), shard=True)  # .bin: safetensors refuses tied embeddings
        self.booster.save_optimizer(optimizer, str(d / "optimizer"), shard=True)
        if lr_scheduler is not None:
            self.booster.save_lr_scheduler(lr_scheduler, str(d / "lr_scheduler.pt"))
        if self.scaler is not None and is_rank_zero():
            torch.save(self.scaler.state_dict(), d / "grad_scaler.pt")

    def load(self, ckpt_dir: str | Path, model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        """Inverse of :meth:`save` on already-boosted objects."""
        import torch

        d = Path(ckpt_dir)
        self.booster.load_model(model, str(d / "model"))
        self.booster.load_optimizer(optimizer, str(d / "optimizer"))
        if lr_scheduler is not None:
            self.booster.load_lr_scheduler(lr_scheduler, str(d / "lr_scheduler.pt"))
        if self.scaler is not None and (d / "grad_scaler.pt").is_file():
            self.scaler.load_state_dict(torch.load(d / "grad_scaler.pt", weights_only=True))

    def unwrap(self, model: Any) -> Any:
        """The underlying Hugging Face (or peft) module of a boosted model, for export,
        eval and generation. Sharded strategies override this to gather full weights
        (called on every rank)."""
        unwrap = getattr(model, "unwrap", None)
        if unwrap is None:
            return model
        try:
            return unwrap(unwrap_peft=False)
        except TypeError:
            return unwrap()


def inner_optimizer(optimizer: Any) -> Any:
    """The ``torch.optim.Optimizer`` inside ColossalAI's ``OptimizerWrapper`` layers."""
    inner = optimizer
    while hasattr(inner, "optim"):
        inner = inner.optim
    return inner


def is_rank_zero() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0
