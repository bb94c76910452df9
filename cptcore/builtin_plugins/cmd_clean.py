"""Adds the ``cpt clean`` command."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def cpt_register_commands(app, pm):
    from ..cli.clean import add_clean_command

    add_clean_command(app, pm)
