"""The strategy contract: the few methods the :class:`~cptcore.train.trainer.Trainer`
calls, and :class:`BoosterStrategy`, which implements them for ColossalAI Booster plugins.

:class:`Strategy` (a ``typing.Protocol``) is the whole contract; a strategy built on
something other than ColossalAI (FSDP2, DeepSpeed...) implements these and nothing
else. The Trainer calls, in order::

    strategy.setup()                                      # after the process group exists
    model, opt, sched = strategy.wrap(model, config.optimizer, make_scheduler)
    for every micro-batch:
        loss_sum = strategy.forward_backward(model, opt, batch, loss_fn, normaliser, sync=last)
    grad_norm = strategy.clip_and_step(opt, max_norm); sched.step(); opt.zero_grad()
    logits = strategy.forward(model, batch)               # evaluation (under no_grad)
    strategy.save(ckpt_dir, model, opt, sched) / strategy.load(...)
    hf_module = strategy.unwrap(model)                    # export

``wrap`` builds the optimizer *after* the model is wrapped (so a strategy that replaces
parameters, FSDP's flat parameters say, builds it over the parameters it trains and
keeps the no-weight-decay groups of :func:`cptcore.train.optim.param_groups`).
What a strategy supports (LoRA, noise, freeze, CPU, pipeline, sharded checkpoints) is
declared once, on its :class:`~cptcore.specs.StrategySpec` (``capabilities``).

Loss contract (token-weighted across micro-batches and ranks): ``loss_fn(logits, batch)
-> (loss_sum, count)`` is the objective's; ``normaliser`` is ``dp_size / N`` where ``N``
is the objective's token count of the whole accumulated batch summed over all
data-parallel ranks (the Trainer all-reduces it before the first backward). Each
micro-batch backpropagates ``loss_sum * normaliser``; since DDP/ZeRO average gradients
over ``dp_size`` ranks the applied gradient is that of ``sum(all token losses) / N`` -
not the mean of per-micro-batch means.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, runtime_checkable

from ..compat import colossalai_cpu, safe_load
from ..contract import IGNORE_INDEX
from ..errors import ConfigError
from .optim import param_groups, strip_names

if TYPE_CHECKING:
    from ..config import OptimizerConfig

#: ``loss_fn(logits, batch) -> (loss_sum 0-dim fp32 tensor, token count)``
LossFn = Callable[[Any, Mapping[str, Any]], "tuple[Any, int]"]

__all__ = ["IGNORE_INDEX", "BoosterStrategy", "LossFn", "Strategy", "count_label_tokens", "default_optimizer",
           "inner_optimizer", "is_rank_zero", "token_loss_sum"]


def token_loss_sum(logits: Any, labels: Any) -> Any:
    """Summed next-token cross-entropy (see :func:`cptcore.train.losses.token_loss_sum`)."""
    from .losses import token_loss_sum as chunked  # lazy: pulls torch

    return chunked(logits, labels)


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


@runtime_checkable
class Strategy(Protocol):
    """What the Trainer needs from a parallel strategy (see the module docstring).

    Attributes: ``name`` (registry name, for messages), ``precision`` (``"fp32" |
    "bf16" | "fp16"``), ``device`` (this rank's ``torch.device``), ``dp_size`` /
    ``dp_rank`` (data-parallel size and rank, for the sampler), ``dp_group`` (the
    process group token counts are summed over; ``None`` = the world).
    """

    name: str
    precision: str
    dp_group: Any

    @property
    def device(self) -> Any: ...

    @property
    def dp_size(self) -> int: ...

    @property
    def dp_rank(self) -> int: ...

    def setup(self) -> None:
        """Once, after the process group exists."""

    def wrap(self, model: Any, optimizer_config: "OptimizerConfig",
             scheduler_factory: Callable[[Any], Any] | None) -> tuple[Any, Any, Any]:
        """Wrap ``model``, then build the optimizer (``optimizer_config``: a
        :class:`cptcore.config.OptimizerConfig`) over what it trains and the LR scheduler
        (``scheduler_factory(torch_optimizer)``) on it. Returns ``(model, optimizer,
        scheduler)``."""

    def forward(self, model: Any, batch: Mapping[str, Any]) -> Any:
        """Logits ``[batch, seq, vocab]`` of ``batch`` (evaluation; no backward)."""

    def forward_backward(self, model: Any, optimizer: Any, batch: Mapping[str, Any], loss_fn: LossFn,
                         normaliser: float, sync: bool = True) -> Any:
        """Forward, ``loss_sum, _ = loss_fn(logits, batch)``, backward of
        ``loss_sum * normaliser``; returns ``loss_sum`` detached (0-dim fp32)."""

    def clip_and_step(self, optimizer: Any, max_norm: float) -> float:
        """Clip the global gradient L2 norm to ``max_norm`` (0 = no clip) and step;
        returns the pre-clip norm."""

    def save(self, ckpt_dir: str | Path, model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        """Write model, optimizer and scheduler state under ``ckpt_dir`` (every rank)."""

    def load(self, ckpt_dir: str | Path, model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        """Inverse of :meth:`save` on wrapped objects."""

    def unwrap(self, model: Any) -> Any:
        """The plain Hugging Face (or peft) module with full weights (every rank)."""


class BoosterStrategy:
    """A ColossalAI Booster plugin plus how the Trainer drives it: implements
    :class:`Strategy` for every built-in strategy.

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
        mixed_precision: Any = None,
    ) -> None:
        if precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"{name}: precision must be fp32, bf16 or fp16, got {precision!r}")
        self.plugin = plugin
        self.name = name
        self.precision = precision
        self.plugin_controls_precision = plugin_controls_precision
        self.optimizer_factory = optimizer_factory or default_optimizer
        self.dp_group = dp_group
        self._dp_size = dp_size
        self._dp_rank = dp_rank
        self.mixed_precision = mixed_precision
        self.booster: Any = None
        self.scaler: Any = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Create the Booster (the process group must exist). Applies the ColossalAI CPU
        compatibility patches and the non-executing checkpoint loaders
        (:mod:`cptcore.compat.safe_load`) first."""
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

    # ------------------------------------------------------------------ build
    def make_optimizer(self, param_groups: list[dict], opt_cfg: Any) -> Any:
        """The optimizer over ``param_groups`` (see :func:`cptcore.train.optim.param_groups`)."""
        return self.optimizer_factory(param_groups, opt_cfg)

    def wrap(self, model: Any, optimizer_config: "OptimizerConfig",
             scheduler_factory: Callable[[Any], Any] | None = None) -> tuple[Any, Any, Any]:
        """:meth:`Strategy.wrap` for Booster plugins: the optimizer over
        :func:`~cptcore.train.optim.param_groups` of ``model`` (decay / no decay), then
        ``booster.boost(model, optimizer)`` (the plugin wraps both together), then the
        scheduler on the boosted optimizer. Plugins that replace the parameters while
        wrapping (FSDP) override this."""
        groups = strip_names(param_groups(model, optimizer_config.weight_decay,
                                           getattr(optimizer_config, "embedding_weight_decay", False)))
        optimizer = self.make_optimizer(groups, optimizer_config)
        model, optimizer, scheduler, _ = self.boost(model, optimizer, scheduler_factory)
        return model, optimizer, scheduler

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
        self, model: Any, optimizer: Any, batch: Mapping[str, Any], loss_fn: LossFn, normaliser: float,
        sync: bool = True,
    ) -> Any:
        """Forward, the objective's summed loss, backward of ``loss_sum * normaliser``.

        Args:
            batch: tensors on :attr:`device`: ``input_ids``/``labels``/``position_ids``
                ``[micro_batch, seq]`` int64, optional ``attention_mask``
                ``[micro_batch, 1, seq, seq]`` float (0 / -inf block-diagonal causal).
            loss_fn: ``loss_fn(logits, batch) -> (loss_sum, count)`` (the objective).
            normaliser: ``dp_size / N`` (see the module docstring).
            sync: False for micro-batches before the last of an accumulated batch
                (gradient all-reduce skipped where the plugin supports ``no_sync``).

        Returns:
            0-dim fp32 tensor, detached: this rank's summed token loss for the micro-batch.
        """
        ctx = contextlib.nullcontext() if sync else self.no_sync(model, optimizer)
        with ctx:
            loss_sum, _ = loss_fn(self.forward(model, batch), batch)
            loss = loss_sum * normaliser
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
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
