"""Built-in plugin: the ``cpt eval`` command (code in :mod:`cptcore.cli.eval`)."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..cli.eval import register


@hookimpl
def cpt_register_commands(app, pm):
    register(app)
