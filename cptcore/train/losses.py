"""Token-summed next-token cross-entropy, computed in chunks along the sequence.

:func:`token_loss_sum` is the loss of the built-in ``causal_lm`` objective. It gives
the same value as ``F.cross_entropy(logits[:, :-1].float().reshape(-1, V),
labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")`` (Hugging Face's
``ForCausalLMLoss`` without the division) within fp32 rounding, but fp32 logits or
log-probabilities of the whole micro-batch never exist at once: the forward runs
``logsumexp`` over ``chunk_tokens`` tokens at a time under ``no_grad`` and keeps only
the (model-dtype) logits and the labels; the backward recomputes each chunk's softmax
in fp32, subtracts the one-hot target, scales by the incoming gradient and writes the
chunk of the logits' gradient (one cast to the logits' dtype, as autograd's
``ToCopyBackward`` does). Peak extra memory: one chunk of fp32 ``[tokens, vocab]``
temporaries instead of three whole-batch ones (the fp32 copy, the saved
log-probabilities and their gradient). The gradient formula is the usual
``d/dz CE(z, y) = softmax(z) - onehot(y)`` (e.g. Goodfellow et al. 2016, 6.2.2.3).

This module imports torch at the top: import it lazily from torch-free code.
"""

from __future__ import annotations

from typing import Any

import torch

from ..contract import IGNORE_INDEX

#: tokens (micro-batch rows x positions) per chunk
DEFAULT_CHUNK_TOKENS = 1024


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` int64: position ``t``'s target ``labels[:, t + 1]``; the last position
    gets :data:`IGNORE_INDEX` (the causal shift without slicing the logits)."""
    target = torch.full_like(labels, IGNORE_INDEX)
    target[:, :-1] = labels[:, 1:]
    return target


def _positions_per_chunk(batch: int, chunk_tokens: int) -> int:
    return max(1, chunk_tokens // max(1, batch))


class _ChunkedCrossEntropy(torch.autograd.Function):
    """``sum`` of cross-entropy over non-ignored positions; see the module docstring."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
        B, S, _ = logits.shape
        step = _positions_per_chunk(B, chunk_tokens)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for s in range(0, S, step):
            x = logits[:, s:s + step].float()
            t = target[:, s:s + step]
            valid = t != IGNORE_INDEX
            picked = x.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            per_token = torch.logsumexp(x, dim=-1) - picked
            total += torch.where(valid, per_token, torch.zeros_like(per_token)).sum()
        ctx.save_for_backward(logits, target)
        ctx.chunk_tokens = chunk_tokens
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, None, None]:
        logits, target = ctx.saved_tensors
        B, S, _ = logits.shape
        step = _positions_per_chunk(B, ctx.chunk_tokens)
        grad = torch.empty_like(logits)
        scale = grad_out.float()
        for s in range(0, S, step):
            x = logits[:, s:s + step].float()
            t = target[:, s:s + step]
            valid = (t != IGNORE_INDEX).unsqueeze(-1)
            p = torch.softmax(x, dim=-1)
            p.scatter_add_(-1, t.clamp(min=0).unsqueeze(-1), torch.full(t.shape + (1,), -1.0, device=p.device))
            p.mul_(valid).mul_(scale)
            grad[:, s:s + step] = p
        return grad, None, None


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """Sum of next-token cross-entropy over unmasked label positions.

    Args:
        logits: ``[batch, seq, vocab]`` float (any dtype; computed in fp32, chunk by chunk).
        labels: ``[batch, seq]`` int64, ``-100`` where masked. Position ``t``'s logits
            predict ``labels[:, t + 1]`` (the usual causal shift, as in HF's
            ``ForCausalLMLoss``).
        chunk_tokens: tokens per chunk (rows x positions; at least one position).

    Returns:
        0-dim fp32 tensor: the summed loss in nats (divide by the token count for a
        mean); exactly 0 when no position carries a label (never NaN).
    """
    if type(logits) is not torch.Tensor:
        # a tensor subclass (Gemini's ColoTensor) would route the custom backward through
        # its __torch_function__ hooks, which rescale it; a plain view keeps the graph
        logits = logits.as_subclass(torch.Tensor)
    target = shifted_targets(labels.to(logits.device))
    return _ChunkedCrossEntropy.apply(logits, target, int(chunk_tokens))


def count_label_tokens(labels: torch.Tensor) -> int:
    """Number of positions that carry loss after the causal shift (``labels[:, 1:] != -100``)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum().item())
