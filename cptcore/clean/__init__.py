"""``cpt clean``: exact and near-duplicate removal, language identification, Gopher-style
quality heuristics and decontamination of raw text, before ``cpt prepare``.

Modules: :mod:`.text` (normalisation, words, stable n-gram hashes), :mod:`.quality`,
:mod:`.dedup`, :mod:`.langid`, :mod:`.decontam` (the built-in filters),
:mod:`.filters` (building the filter chain), :mod:`.pipeline` (the sharded, restartable
run), :mod:`.report` (``stats.json`` and ``card.md``).
"""
