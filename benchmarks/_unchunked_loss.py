"""The loss before chunking, as a plugin file (``cpt --plugin benchmarks/_unchunked_loss.py
train ... --objective causal_lm_unchunked``): the baseline of benchmarks/memory.py.

``F.cross_entropy`` over the whole micro-batch's fp32 shifted logits at once, summed
(what ``cptcore.train.strategy.token_loss_sum`` was before the chunked loss)."""

from cptcore import ObjectiveSpec, hookimpl


def unchunked(logits, batch, options):
    import torch.nn.functional as F

    from cptcore.train.losses import count_label_tokens

    shift = logits[:, :-1, :].float()
    labels = batch["labels"][:, 1:].to(shift.device)
    loss = F.cross_entropy(shift.reshape(-1, shift.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum")
    return loss, count_label_tokens(batch["labels"])


@hookimpl
def cpt_register_objectives():
    count = lambda batch: int((batch["labels"][:, 1:] != -100).sum())
    return [ObjectiveSpec(name="causal_lm_unchunked", loss=unchunked, count=count,
                          description="the pre-chunking cross-entropy (memory baseline)")]
