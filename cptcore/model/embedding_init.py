"""Initialisations of new embedding rows (``cpt model resize --init NAME``).

The methods are plugins (``cpt_register_embedding_inits``, built-ins in
:mod:`cptcore.builtin_plugins.embedding_inits`); this module holds what they share and
their arithmetic. Every method gets an :class:`InitRequest` per matrix (the input
embedding, and the output embedding when it is not tied) and returns the new rows.

Built-in methods (formulas; ``E`` = the old rows ``[V_old, d]`` of the matrix,
``S(t)`` = the old sub-token ids of new token ``t``):

* ``mean``: ``row(t) = mean(E[S(t)])`` (Chinese-LLaMA-Alpaca; Hewitt 2021 §3 argues the
  mean of old rows keeps the new model's distribution close to the old one).
* ``noisy_mean``: ``mean(E[S(t)]) + scale · σ ⊙ z``, ``z ~ N(0, I)``, ``σ`` the per-
  dimension standard deviation of ``E``.
* ``multivariate``: ``row(t) ~ N(μ, scale · Σ)`` with ``μ``, ``Σ`` the mean and
  covariance of all rows of ``E`` (Hewitt 2021, "Initializing New Word Embeddings for
  Pretrained Language Models", https://nlp.stanford.edu/~johnhew/vocab-expansion.html;
  his snippet scales ``Σ`` by 1e-5 and transformers' ``mean_resizing`` by 1e-9; ``scale``
  is 1 by default so the rows have the old rows' spread).
* ``normal``: ``N(0, initializer_range²)`` (transformers' ``_init_weights``).
* ``zero``: all zeros (for comparison only: a zero output row gives logit 0, and zero
  inputs carry no information; cf. Baichuan2 issue #155, loss 0).

Sums and covariances are float64; results are cast once to the matrix's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ResizePlan:
    """New ids and their sub-token ids under the old tokenizer (flattened).

    ``sub_ids[k]`` belongs to new row ``owner[k]`` (0-based among new ids);
    ``old_size`` is the old tokenizer's length, new rows are ``old_size..new_size-1``."""

    old_size: int
    new_size: int
    sub_ids: list[int]
    owner: list[int]

    @property
    def n_new(self) -> int:
        return self.new_size - self.old_size


@dataclass(frozen=True)
class InitRequest:
    """What an init method gets for one matrix.

    Attributes:
        weight: the matrix's old rows, ``[rows, d]`` float (a copy; rows ``<
            plan.old_size`` are the old tokenizer's tokens).
        plan: the new tokens' sub-token ids (:class:`ResizePlan`).
        which: ``"input"`` or ``"output"``.
        generator: ``torch.Generator`` (CPU) seeded by ``--seed``; use it for any
            randomness so a resize is reproducible.
        options: an instance of the spec's options class, or ``None``.
        initializer_range: the model config's ``initializer_range`` (0.02 if absent).
    """

    weight: Any
    plan: ResizePlan
    which: str
    generator: Any
    options: Any = None
    initializer_range: float = 0.02

    def sub_token_mean(self):
        """``[n_new, d]`` mean of each new token's sub-token rows (:func:`mean_rows`)."""
        return mean_rows(self.weight, self.plan)

    def old_rows(self):
        """``[old_size, d]`` float64 rows of the old tokenizer's tokens."""
        import torch

        return self.weight.detach()[: self.plan.old_size].to(torch.float64)


def mean_rows(weight, plan: ResizePlan):
    """Mean of sub-token rows for every new token.

    Args:
        weight: ``[rows, hidden]`` embedding or output matrix (any float dtype); only
            rows ``< plan.old_size`` are read.

    Returns:
        ``[new_size - old_size, hidden]`` tensor in ``weight``'s dtype (float64 sums).
    """
    import torch

    n_new = plan.n_new
    sub = torch.tensor(plan.sub_ids, dtype=torch.long)
    owner = torch.tensor(plan.owner, dtype=torch.long)
    rows = weight.detach()[sub].to(torch.float64)
    sums = torch.zeros(n_new, weight.shape[1], dtype=torch.float64).index_add_(0, owner, rows)
    counts = torch.bincount(owner, minlength=n_new).to(torch.float64)
    return (sums / counts[:, None]).to(weight.dtype)


def mean_and_covariance(rows):
    """``(μ [d], Σ [d, d])`` of ``rows`` ``[n, d]`` (float64; ``Σ`` with ``1/(n-1)``)."""
    import torch

    x = rows.to(torch.float64)
    mu = x.mean(0)
    centered = x - mu
    return mu, centered.T @ centered / max(1, x.shape[0] - 1)


def sample_multivariate(mu, cov, n: int, generator):
    """``[n, d]`` float64 samples of ``N(mu, cov)``: ``mu + z · (V √λ)ᵀ`` with ``cov = V
    diag(λ) Vᵀ`` (``torch.linalg.eigh``; eigenvalues below 0 from rounding are clipped),
    so a singular covariance (fewer rows than dimensions) works too."""
    import torch

    lam, vec = torch.linalg.eigh(cov.to(torch.float64))
    root = vec * lam.clamp(min=0).sqrt()
    z = torch.randn(n, mu.shape[0], generator=generator, dtype=torch.float64)
    return mu + z @ root.T


def init_mean(req: InitRequest):
    return req.sub_token_mean()


@dataclass(frozen=True)
class NoisyMeanOptions:
    """``scale``: noise standard deviation as a multiple of the old rows' per-dimension
    standard deviation."""

    scale: float = 0.1

    def __post_init__(self):
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"scale must be a finite number >= 0, got {self.scale}")


def init_noisy_mean(req: InitRequest):
    import torch

    scale = (req.options or NoisyMeanOptions()).scale
    sigma = req.old_rows().std(0)
    z = torch.randn(req.plan.n_new, sigma.shape[0], generator=req.generator, dtype=torch.float64)
    return (req.sub_token_mean().to(torch.float64) + scale * sigma * z).to(req.weight.dtype)


@dataclass(frozen=True)
class MultivariateOptions:
    """``scale`` multiplies the covariance (1 = the old rows' own; Hewitt's snippet
    used 1e-5, transformers' ``mean_resizing`` 1e-9)."""

    scale: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"scale must be a finite number >= 0, got {self.scale}")


def init_multivariate(req: InitRequest):
    scale = (req.options or MultivariateOptions()).scale
    mu, cov = mean_and_covariance(req.old_rows())
    return sample_multivariate(mu, scale * cov, req.plan.n_new, req.generator).to(req.weight.dtype)


def init_normal(req: InitRequest):
    import torch

    out = torch.randn(req.plan.n_new, req.weight.shape[1], generator=req.generator, dtype=torch.float64)
    return (out * req.initializer_range).to(req.weight.dtype)


def init_zero(req: InitRequest):
    import torch

    return torch.zeros(req.plan.n_new, req.weight.shape[1], dtype=req.weight.dtype)
