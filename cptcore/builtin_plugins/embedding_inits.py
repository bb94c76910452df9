"""Built-in embedding inits for ``cpt model resize --init NAME``: ``mean`` (default),
``noisy_mean``, ``multivariate`` (Hewitt 2021), ``normal`` and ``zero`` (comparison
only). Formulas in :mod:`cptcore.model.embedding_init`."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..model import embedding_init as ei
from ..specs import EmbeddingInitSpec

ZERO_WARNING = (
    "init 'zero' is for comparison only: zero rows carry no information, and tied or output "
    "zero rows give every new token logit 0 (Baichuan2 #155: loss 0)"
)


@hookimpl
def cpt_register_embedding_inits():
    return [
        EmbeddingInitSpec(
            name="mean",
            init=ei.init_mean,
            description="mean of the token's sub-token rows under the old tokenizer (input and output separately)",
        ),
        EmbeddingInitSpec(
            name="noisy_mean",
            init=ei.init_noisy_mean,
            options=ei.NoisyMeanOptions,
            description="sub-token mean + Gaussian noise (scale × the old rows' per-dimension std)",
        ),
        EmbeddingInitSpec(
            name="multivariate",
            init=ei.init_multivariate,
            options=ei.MultivariateOptions,
            aliases=("hewitt",),
            description="sample N(mean, scale·covariance) of the old rows (Hewitt 2021)",
        ),
        EmbeddingInitSpec(
            name="normal",
            init=ei.init_normal,
            description="N(0, initializer_range²), transformers' _init_weights",
        ),
        EmbeddingInitSpec(
            name="zero",
            init=ei.init_zero,
            description="all zeros (comparison only; warns)",
            warning=ZERO_WARNING,
        ),
    ]
