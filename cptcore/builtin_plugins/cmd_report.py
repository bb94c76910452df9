"""Built-in plugin: the ``cpt report`` command (code in :mod:`cptcore.cli.report`)."""

from __future__ import annotations

from ..cli.report import register
from ..hookspecs import hookimpl


@hookimpl
def cpt_register_commands(app, pm):
    register(app)
