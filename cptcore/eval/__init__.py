"""Evaluation: bits per byte, named held-out sets, ``cpt eval`` on raw text across
tokenizers, multiple-choice accuracy. Torch-free at import (heavy libraries load inside
functions)."""
