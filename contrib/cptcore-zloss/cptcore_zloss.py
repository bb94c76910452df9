"""z-loss objective for cptcore: causal_lm + coef * logsumexp(logits)^2 per label token,
which keeps the softmax normaliser near 1 (PaLM, Chowdhery et al. 2022, sec. 5)."""
from dataclasses import dataclass

from cptcore import ObjectiveSpec, hookimpl


@dataclass(frozen=True)
class ZLossOptions:
    coef: float = 1e-4  # PaLM's value
    chunk_tokens: int = 1024


def z_loss(logits, batch, options):
    import torch
    from cptcore.train.losses import count_label_tokens, shifted_targets, token_loss_sum

    opts = options or ZLossOptions()
    valid = shifted_targets(batch["labels"]) != -100  # [B, S]: positions that carry a label
    z = torch.logsumexp(logits[valid].float(), dim=-1)  # [tokens]
    ce = token_loss_sum(logits, batch["labels"], opts.chunk_tokens)
    return ce + opts.coef * (z * z).sum(), count_label_tokens(batch["labels"])


@hookimpl
def cpt_register_objectives():
    count = lambda batch: int((batch["labels"][:, 1:] != -100).sum())
    return [ObjectiveSpec(name="z_loss", loss=z_loss, count=count, options=ZLossOptions,
                          description="causal_lm + coef * logsumexp(logits)^2 (PaLM z-loss)")]
