"""Built-in objective ``causal_lm``: token-weighted next-token cross-entropy (the loss
of continual pretraining and SFT alike; SFT masks prompts with label -100), computed in
chunks along the sequence (:mod:`cptcore.train.losses`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..hookspecs import hookimpl
from ..specs import ObjectiveSpec


@dataclass(frozen=True)
class CausalLMOptions:
    """``--set training.objective_options.chunk_tokens=N``."""

    chunk_tokens: int = 1024  # tokens (rows x positions) per loss chunk; smaller = less memory

    def __post_init__(self):
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")


def chunk_tokens(options: CausalLMOptions | None) -> int:
    """Tokens per loss chunk for ``options`` (``None``: the default): the one value the
    loss (:func:`causal_lm_loss`) and the memory estimate (``ObjectiveSpec.loss_chunk_tokens``)
    both read."""
    return (options or CausalLMOptions()).chunk_tokens


def causal_lm_loss(logits: Any, batch: Mapping[str, Any], options: CausalLMOptions | None) -> tuple[Any, int]:
    """``(sum of cross-entropy over label tokens, their count)``; ``logits``
    ``[B, S, V]``, ``batch["labels"]`` ``[B, S]`` int64 (-100 = no loss)."""
    from ..train.losses import count_label_tokens, token_loss_sum  # lazy: pulls torch (only when training)

    return token_loss_sum(logits, batch["labels"], chunk_tokens(options)), count_label_tokens(batch["labels"])


def count_tokens(batch: Mapping[str, Any]) -> int:
    """Label tokens after the causal shift (what :func:`causal_lm_loss` sums over)."""
    from ..train.losses import count_label_tokens  # lazy: pulls torch

    return count_label_tokens(batch["labels"])


@hookimpl
def cpt_register_objectives():
    return [
        ObjectiveSpec(
            name="causal_lm", loss=causal_lm_loss, count=count_tokens, options=CausalLMOptions,
            loss_chunk_tokens=chunk_tokens,
            description="next-token cross-entropy, summed over label tokens, in chunks along the sequence",
        )
    ]
