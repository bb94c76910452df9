"""Built-in ``cpt clean`` filters: language, decontaminate, quality, repetition (document
stage) and exact, near (dedup stage)."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import FilterSpec
from ..clean.decontam import Decontaminate, DecontaminateOptions
from ..clean.dedup import ExactDedup, NearDedup, NearOptions
from ..clean.langid import LanguageFilter, LanguageOptions
from ..clean.quality import GopherQuality, GopherRepetition, QualityOptions, RepetitionOptions


def _exact(options, context):
    return ExactDedup(context.scratch, context.index_cache_mb)


def _near(options, context):
    return NearDedup(options, context.seed, context.scratch, context.index_cache_mb)


def _quality(options, context):
    return GopherQuality(options)


def _repetition(options, context):
    return GopherRepetition(options)


def _language(options, context):
    return LanguageFilter(options)


def _decontaminate(options, context):
    return Decontaminate(options)


@hookimpl
def cpt_register_filters():
    return [
        FilterSpec(name="language", make=_language, options=LanguageOptions,
                   description="keep documents whose most likely language (lingua) is one of --language"),
        FilterSpec(name="decontaminate", make=_decontaminate, options=DecontaminateOptions, aliases=("decontam",),
                   description="remove documents sharing a 13-word (CJK: 39-character) n-gram with a --decontaminate NAME=FILE set"),
        FilterSpec(name="quality", make=_quality, options=QualityOptions, aliases=("gopher_quality",),
                   description="Gopher quality rules: length, word length, symbols, bullets, ellipses, letters, stop words"),
        FilterSpec(name="repetition", make=_repetition, options=RepetitionOptions, aliases=("gopher_repetition",),
                   description="Gopher repetition rules: duplicate lines/paragraphs, top and duplicate n-grams"),
        FilterSpec(name="exact", make=_exact, stage="dedup",
                   description="exact duplicates: BLAKE2b of the normalised text (NFKC, case-folded, spaces collapsed)"),
        FilterSpec(name="near", make=_near, stage="dedup", options=NearOptions, aliases=("minhash",),
                   description="near duplicates: datasketch MinHash LSH over word 5-gram shingles (seeded)"),
    ]
