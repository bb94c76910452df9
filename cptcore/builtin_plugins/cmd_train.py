"""Built-in plugin: ``cpt train``, ``cpt export`` and ``cpt generate`` (code in
:mod:`cptcore.cli.train`)."""

from __future__ import annotations

from ..cli.train import register
from ..hookspecs import hookimpl


@hookimpl
def cpt_register_commands(app, pm):
    register(app, pm)
