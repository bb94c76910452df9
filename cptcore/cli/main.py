"""Console-script entry point for ``cpt``."""

from __future__ import annotations

import os
import sys

from .app import run

# Commands that tokenize but never run a model. transformers imports torch with
# AutoTokenizer when torch is installed (~200 MB of RssAnon in the driver and again in each
# --num-proc worker, measured by benchmarks/scale.py); USE_TORCH=0 stops that. transformers
# reads it once, at its first import (transformers/utils/import_utils.py), so it can only
# be set here, in the console script, before anything imports transformers -- never by the
# library, whose in-process caller may load a model next. A USE_TORCH the user set wins.
TOKENIZE_ONLY = frozenset({"prepare"})


def command_name(argv: list[str]) -> str | None:
    """The subcommand ``argv`` (``sys.argv[1:]``) names: its first word not starting with ``-``."""
    return next((a for a in argv if not a.startswith("-")), None)


def main() -> None:
    if command_name(sys.argv[1:]) in TOKENIZE_ONLY:
        os.environ.setdefault("USE_TORCH", "0")
    sys.exit(run())


if __name__ == "__main__":
    main()
