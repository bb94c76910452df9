"""Built-in plugin: ``cpt pipeline`` and ``cpt recipes`` (code in :mod:`cptcore.cli.pipeline`)."""

from __future__ import annotations

from ..cli.pipeline import register
from ..hookspecs import hookimpl


@hookimpl
def cpt_register_commands(app, pm):
    register(app, pm)
