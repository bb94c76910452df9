"""Built-in plugin: the ``cpt tokenizer`` (train, expand) and ``cpt model`` (resize,
import-gguf) command groups (code in :mod:`cptcore.cli.tokenizer` and
:mod:`cptcore.cli.model`)."""

from __future__ import annotations

from ..cli.model import make_model_app
from ..cli.tokenizer import make_tokenizer_app
from ..hookspecs import hookimpl


@hookimpl
def cpt_register_commands(app, pm):
    app.add_typer(make_tokenizer_app(), name="tokenizer")
    app.add_typer(make_model_app(pm), name="model")
