"""Loss, perplexity and bits per byte from summed negative log-likelihoods.

Bits per byte (Gao et al. 2020, "The Pile: An 800GB Dataset of Diverse Text for
Language Modeling", arXiv:2101.00027, section 5 / appendix on bits per UTF-8 byte):

    bpb = (sum of token NLL in nats) / ln 2 / (UTF-8 bytes of the scored text)

It does not depend on how the text was cut into tokens, so it compares a base model with
its vocabulary-expanded successor on the same text, where the per-token loss and
perplexity cannot (their token counts differ). ``loss`` is the mean NLL per scored token
(nats/token) and ``perplexity = exp(loss)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

LN2 = math.log(2.0)


@dataclass(frozen=True)
class EvalResult:
    """One model on one eval set.

    Attributes:
        nll: summed negative log-likelihood of the scored tokens (nats).
        tokens: scored tokens (each predicted once).
        bytes: UTF-8 bytes of the scored tokens' text (None when unknown: a folder
            prepared before ``label_bytes`` existed).
        loss: ``nll / tokens`` (nats/token).
        perplexity: ``exp(loss)`` (capped at ``exp(700)``).
        bpb: ``nll / ln 2 / bytes`` (bits per UTF-8 byte), None when ``bytes`` is.
    """

    nll: float
    tokens: int
    bytes: int | None
    loss: float
    perplexity: float
    bpb: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """``{"loss", "perplexity", "bpb", "tokens"}`` (bpb left out when unknown)."""
        out = {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens}
        if self.bpb is not None:
            out["bpb"] = self.bpb
        return out


def bits_per_byte(nll_nats: float, nbytes: int) -> float:
    """``nll_nats / ln 2 / nbytes`` (Gao et al. 2020).

    Raises:
        ValueError: ``nbytes`` is not positive.
    """
    if nbytes <= 0:
        raise ValueError(f"bits per byte needs a positive byte count, got {nbytes}")
    return nll_nats / LN2 / nbytes


def result(nll: float, tokens: int, nbytes: int | None) -> EvalResult:
    """An :class:`EvalResult` from the sums.

    Raises:
        ValueError: ``tokens`` is 0 (nothing was scored).
    """
    if tokens <= 0:
        raise ValueError("nothing was scored (0 tokens carry labels)")
    loss = nll / tokens
    bpb = bits_per_byte(nll, nbytes) if nbytes else None
    return EvalResult(nll=float(nll), tokens=int(tokens), bytes=None if nbytes is None else int(nbytes),
                      loss=loss, perplexity=math.exp(min(loss, 700.0)), bpb=bpb)


def eval_metrics(results: Mapping[str, EvalResult]) -> dict[str, Any]:
    """Flat metrics of per-set results: per set ``NAME`` ``eval/NAME/loss`` (nats/token),
    ``eval/NAME/perplexity``, ``eval/NAME/bpb`` (absent for folders prepared without
    ``label_bytes``), ``eval/NAME/tokens``; pooled over all sets (token-weighted):
    ``eval_loss``, ``eval_perplexity``, ``eval_tokens`` and ``eval_bpb`` (when every set
    has bytes).

    Raises:
        CptError: the eval data has no label token.
    """
    from ..errors import CptError

    out: dict[str, Any] = {}
    nll, tokens, nbytes = 0.0, 0, 0
    for name, r in results.items():
        out.update({f"eval/{name}/{k}": v for k, v in r.metrics().items()})
        nll, tokens = nll + r.nll, tokens + r.tokens
        nbytes = None if (nbytes is None or r.bytes is None) else nbytes + r.bytes
    if tokens == 0:
        raise CptError("evaluation data has no label tokens")
    pooled = result(nll, tokens, nbytes)
    out.update({"eval_loss": pooled.loss, "eval_perplexity": pooled.perplexity, "eval_tokens": int(pooled.tokens)})
    if pooled.bpb is not None:
        out["eval_bpb"] = pooled.bpb
    return out
