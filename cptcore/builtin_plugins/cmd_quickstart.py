"""Built-in plugin: the ``cpt quickstart`` command (code in :mod:`cptcore.quickstart`)."""

from __future__ import annotations

from ..cli.quickstart import register
from ..hookspecs import hookimpl


@hookimpl
def cpt_register_commands(app, pm):
    register(app, pm)
