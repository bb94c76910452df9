"""The ``cpt`` command line, built by :func:`make_app` from a plugin manager."""

from .app import make_app, run

__all__ = ["make_app", "run"]
