"""Built-in ``cpt_build_model`` provider (``trylast``): a Hugging Face folder or a GGUF
file, through :func:`cptcore.model.load.load_model`."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..model.load import load_model


@hookimpl(trylast=True)
def cpt_build_model(config):
    return load_model(config.model, precision=config.strategy.precision)
