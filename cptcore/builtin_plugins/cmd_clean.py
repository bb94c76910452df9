"""Adds the ``cpt clean`` command."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..cli.clean import add_clean_command


@hookimpl
def cpt_register_commands(app, pm):
    add_clean_command(app, pm)
