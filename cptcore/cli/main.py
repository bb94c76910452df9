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
# library, whose in-process caller may load a model next. A USE_TORCH the user set wins
# (USE_TORCH=1 cpt prepare ..., for a cpt_tokenize_fn plugin that asks for torch tensors).
# Without torch, transformers warns at import "None of PyTorch, TensorFlow >= 2.0, or Flax
# have been found. Models won't be available ..." (an advisory warning): true of this
# process, alarming in every `cpt prepare` output, so advisory warnings are off with it.
TOKENIZE_ONLY = frozenset({"prepare"})


def command_name(argv: list[str]) -> str | None:
    """The subcommand ``argv`` (``sys.argv[1:]``) names: its first word not starting with
    ``-`` that is not the value of a global ``--plugin FILE``."""
    words = iter(argv)
    for word in words:
        if word == "--plugin":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main() -> None:
    if command_name(sys.argv[1:]) in TOKENIZE_ONLY and "USE_TORCH" not in os.environ:
        os.environ["USE_TORCH"] = "0"
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    sys.exit(run())


if __name__ == "__main__":
    main()
