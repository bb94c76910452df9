"""Gopher-style quality and repetition heuristics (Rae et al. 2021, "Scaling Language
Models: Methods, Analysis & Insights from Training Gopher", appendix A.1.1 and table A1).
The defaults are the paper's thresholds; every one is an option
(``--set quality.min_words=20``). Words are those of :mod:`cptcore.clean.text` (every
CJK character is a word). Two adaptations for text without spaces, both stated in
docs/clean.md: the mean-word-length and stop-word rules apply only to documents whose
words are less than half CJK characters, and the n-gram rules use ``cjk_ngram_scale``
times longer n-grams on such documents (a CJK character carries less than a word).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .text import CJK_RE, ngram_hashes, word_hashes, words

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


@dataclass(frozen=True)
class QualityOptions:
    """Gopher quality rules; a document failing any one is removed."""

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0  # characters; space-separated text only
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # ("#" + "..." + "…") per word
    max_bullet_lines_fraction: float = 0.9  # lines starting with a bullet
    max_ellipsis_lines_fraction: float = 0.3  # lines ending with "..." or "…"
    min_alpha_words_fraction: float = 0.8  # words with at least one letter
    min_stop_words: int = 2  # of STOP_WORDS; space-separated text only (0: off)


@dataclass(frozen=True)
class RepetitionOptions:
    """Gopher repetition rules (fractions of lines, paragraphs or characters)."""

    max_dup_line_fraction: float = 0.30
    max_dup_para_fraction: float = 0.30
    max_dup_line_char_fraction: float = 0.20
    max_dup_para_char_fraction: float = 0.20
    # characters in the most frequent n-gram, n = 2, 3, 4
    max_top_ngram_char_fraction: tuple[float, ...] = (0.20, 0.18, 0.16)
    # characters in the repeats of n-grams (every occurrence after the first), n = 5..10
    max_dup_ngram_char_fraction: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)
    cjk_ngram_scale: int = 2  # n-gram length multiplier on mostly-CJK documents


_BULLETS = ("-", "*", "•", "‣", "●", "○", "◦", "▪")


def _fail(section: str, key: str, want: str, value) -> ConfigError:
    return ConfigError(f"{section}.{key} must be {want}, got {value!r}")


def _check_quality(o: QualityOptions) -> None:
    """Raises ConfigError naming the first option out of range."""
    if o.min_words < 0 or o.max_words < max(1, o.min_words):
        bad = "min_words" if o.min_words < 0 else "max_words"
        raise _fail("quality", bad, ">= 0 and max_words >= min_words (>= 1)", getattr(o, bad))
    if not 0 <= o.min_mean_word_length <= o.max_mean_word_length:
        raise _fail("quality", "min_mean_word_length", "between 0 and max_mean_word_length", o.min_mean_word_length)
    if o.max_symbol_word_ratio < 0:
        raise _fail("quality", "max_symbol_word_ratio", ">= 0", o.max_symbol_word_ratio)
    for key in ("max_bullet_lines_fraction", "max_ellipsis_lines_fraction", "min_alpha_words_fraction"):
        if not 0 <= getattr(o, key) <= 1:
            raise _fail("quality", key, "a fraction between 0 and 1", getattr(o, key))
    if not 0 <= o.min_stop_words <= len(STOP_WORDS):
        raise _fail("quality", "min_stop_words", f"between 0 and {len(STOP_WORDS)} (the stop words: {', '.join(STOP_WORDS)})", o.min_stop_words)


def _check_repetition(o: RepetitionOptions) -> None:
    """Raises ConfigError naming the first option out of range (fractions, list lengths)."""
    for key in ("max_dup_line_fraction", "max_dup_para_fraction", "max_dup_line_char_fraction", "max_dup_para_char_fraction"):
        if not 0 <= getattr(o, key) <= 1:
            raise _fail("repetition", key, "a fraction between 0 and 1", getattr(o, key))
    for key, n, grams in (("max_top_ngram_char_fraction", 3, "2, 3, 4"), ("max_dup_ngram_char_fraction", 6, "5..10")):
        values = getattr(o, key)
        if len(values) != n or not all(0 <= v <= 1 for v in values):
            raise _fail("repetition", key, f"{n} fractions between 0 and 1 (for the {grams}-grams)", list(values))
    if o.cjk_ngram_scale < 1:
        raise _fail("repetition", "cjk_ngram_scale", ">= 1", o.cjk_ngram_scale)


def _cjk_dominant(ws: list[str], text: str) -> bool:
    return len(CJK_RE.findall(text)) * 2 > len(ws)


class GopherQuality:
    """``check(text) -> None | "RULE (detail)"`` for the rules of :class:`QualityOptions`.

    Raises:
        ConfigError: an option out of range (negative counts, fractions outside 0..1,
            a minimum above its maximum).
    """

    def __init__(self, options: QualityOptions):
        _check_quality(options)
        self.o = options

    def check(self, text: str) -> str | None:
        o = self.o
        ws = words(text)
        n = len(ws)
        if n < o.min_words:
            return f"too few words ({n} < {o.min_words})"
        if n > o.max_words:
            return f"too many words ({n} > {o.max_words})"
        spaced = not _cjk_dominant(ws, text)
        if spaced:
            mean = sum(map(len, ws)) / n
            if not o.min_mean_word_length <= mean <= o.max_mean_word_length:
                return f"mean word length ({mean:.2f} outside {o.min_mean_word_length}-{o.max_mean_word_length})"
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > o.max_symbol_word_ratio:
            return f"symbol/word ratio ({symbols / n:.3f} > {o.max_symbol_word_ratio})"
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if lines:
            bullets = sum(ln.startswith(_BULLETS) for ln in lines) / len(lines)
            if bullets > o.max_bullet_lines_fraction:
                return f"bullet lines ({bullets:.2f} > {o.max_bullet_lines_fraction})"
            ellipsis = sum(ln.endswith(("...", "…")) for ln in lines) / len(lines)
            if ellipsis > o.max_ellipsis_lines_fraction:
                return f"ellipsis lines ({ellipsis:.2f} > {o.max_ellipsis_lines_fraction})"
        alpha = sum(any(c.isalpha() for c in w) for w in ws) / n
        if alpha < o.min_alpha_words_fraction:
            return f"alphabetic words ({alpha:.2f} < {o.min_alpha_words_fraction})"
        if spaced and o.min_stop_words:
            stops = len(set(w.lower() for w in ws) & set(STOP_WORDS))
            if stops < o.min_stop_words:
                return f"stop words ({stops} < {o.min_stop_words})"
        return None


def _dup_fractions(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of their characters)."""
    seen: set = set()
    dup = dup_chars = 0
    for it in items:
        if it in seen:
            dup += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    total_chars = sum(map(len, items))
    return dup / len(items), (dup_chars / total_chars if total_chars else 0.0)


class GopherRepetition:
    """``check(text) -> None | "RULE (detail)"`` for the rules of :class:`RepetitionOptions`.

    Raises:
        ConfigError: a fraction outside 0..1, a list of the wrong length (3 top n-gram
            limits, 6 duplicate n-gram limits), ``cjk_ngram_scale < 1``.
    """

    def __init__(self, options: RepetitionOptions):
        _check_repetition(options)
        self.o = options

    def check(self, text: str) -> str | None:
        o = self.o
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        paras = [p.strip() for p in text.split("\n\n") if p.strip()]
        for name, items, max_frac, max_chars in (
            ("line", lines, o.max_dup_line_fraction, o.max_dup_line_char_fraction),
            ("paragraph", paras, o.max_dup_para_fraction, o.max_dup_para_char_fraction),
        ):
            if len(items) < 2:
                continue
            frac, chars = _dup_fractions(items)
            if frac > max_frac:
                return f"duplicate {name}s ({frac:.2f} > {max_frac})"
            if chars > max_chars:
                return f"duplicate {name} characters ({chars:.2f} > {max_chars})"
        ws = words(text)
        if len(ws) < 2:
            return None
        scale = o.cjk_ngram_scale if _cjk_dominant(ws, text) else 1
        hashes = word_hashes(ws)
        lens = np.fromiter(map(len, ws), dtype=np.int64, count=len(ws))
        total = int(lens.sum())
        csum = np.concatenate([[0], np.cumsum(lens)])
        for n, limit in zip((2, 3, 4), o.max_top_ngram_char_fraction):
            n *= scale
            grams = ngram_hashes(hashes, n)
            if len(grams) == 0:
                continue
            uniq, first, counts = np.unique(grams, return_index=True, return_counts=True)
            k = int(np.argmax(counts))
            if counts[k] < 2:
                continue
            i = int(first[k])
            frac = int(counts[k]) * int(csum[i + n] - csum[i]) / total
            if frac > limit:
                return f"top {n}-gram characters ({frac:.2f} > {limit})"
        for n, limit in zip(range(5, 11), o.max_dup_ngram_char_fraction):
            n *= scale
            grams = ngram_hashes(hashes, n)
            if len(grams) == 0:
                continue
            # the repeats (every occurrence after the first) and the words they span
            repeat = np.ones(len(grams), dtype=bool)
            repeat[np.unique(grams, return_index=True)[1]] = False
            starts = np.nonzero(repeat)[0]
            if len(starts) == 0:
                continue
            cover = np.zeros(len(ws) + 1, dtype=np.int64)
            np.add.at(cover, starts, 1)
            np.add.at(cover, starts + n, -1)
            covered = np.cumsum(cover)[: len(ws)] > 0
            frac = int(lens[covered].sum()) / total
            if frac > limit:
                return f"duplicate {n}-gram characters ({frac:.2f} > {limit})"
        return None
