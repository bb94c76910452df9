"""Built-in plugin: the ``cpt quickstart`` command (code in :mod:`cptcore.quickstart`)."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def cpt_register_commands(app, pm):
    from ..cli.quickstart import register

    register(app, pm)
