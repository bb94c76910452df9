"""Adds the ``cpt prepare`` command group (``pretrain``, ``sft``)."""

from __future__ import annotations

from ..cli.prepare import make_prepare_app
from ..hookspecs import hookimpl


@hookimpl
def cpt_register_commands(app, pm):
    app.add_typer(make_prepare_app(pm), name="prepare")
