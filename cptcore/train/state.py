"""The counters a training run saves (:class:`TrainState`, ``trainer_state.json``) and what
one optimizer step reports (:class:`StepMetrics`): plain dataclasses, torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class TrainState:
    """Counters saved in ``trainer_state.json``."""

    step: int = 0  # optimizer steps done
    micro_batches: int = 0  # micro-batches consumed per rank
    tokens_seen: int = 0  # non-pad input tokens over all ranks
    loss_tokens: int = 0  # label tokens that carried loss, all ranks
    sampler: dict = field(default_factory=dict)
    stage: dict | None = None  # a recipe stage's record {name, index, recipe_sha256} (cptcore.recipes.stages)
    ledger: dict = field(default_factory=dict)  # RunLedger.state_dict(): baseline, best step (JSON)

    def to_dict(self) -> dict:
        return {"step": self.step, "micro_batches": self.micro_batches, "tokens_seen": self.tokens_seen,
                "loss_tokens": self.loss_tokens, "sampler": self.sampler, "epoch": self.sampler.get("epoch", 0),
                "ledger": self.ledger, **({"stage": self.stage} if self.stage else {})}

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> "TrainState":
        return cls(step=int(saved["step"]), micro_batches=int(saved["micro_batches"]),
                   tokens_seen=int(saved["tokens_seen"]), loss_tokens=int(saved.get("loss_tokens", 0)),
                   sampler=dict(saved.get("sampler") or {}), stage=saved.get("stage") or None,
                   ledger=saved.get("ledger") or {})


@dataclass(frozen=True)
class StepMetrics:
    """What one optimizer step did (all ranks summed).

    Attributes:
        loss: mean loss per label token of the step, nats (0.0 when no token carried a
            label: never NaN); grad_norm: pre-clip global L2 norm (0.0 then too);
        lr: the learning rate the update used; tokens: non-pad input tokens;
        loss_tokens: label tokens; seconds: wall time of the step.
    """

    loss: float
    grad_norm: float
    lr: float
    tokens: int
    loss_tokens: int
    seconds: float
