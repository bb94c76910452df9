"""Data preparation: reading inputs, tokenizing, packing, SFT rendering, Arrow output.

Modules: :mod:`.readers` (files, globs, weights, bad input), :mod:`.tokenize` (BOS/EOS,
batched encoding, masks from offsets), :mod:`.packing` (packers, ``Doc``/``Row``),
:mod:`.sft` (conversation formats, turn-boundary cutting), :mod:`.mixing` (weighted
interleaving), :mod:`.writer` (Arrow shards), :mod:`.manifest`, :mod:`.stats`,
:mod:`.pipeline` (``prepare_pretrain`` / ``prepare_sft``).
"""
