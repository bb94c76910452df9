"""Text helpers shared by the filters: normalisation, words and stable n-gram hashes.

*Words* are whitespace-separated runs, except that every CJK character (Han, kana,
Hangul) is a word of its own, so word-based rules and n-grams work on Chinese text
without a segmenter. Hashes are xxHash64 of the UTF-8 word, combined into n-gram hashes
by a polynomial rolling hash modulo 2**64: the same text gives the same hashes in every
process, on every machine (unlike Python's ``hash``).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import xxhash

_CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
WORD_RE = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
CJK_RE = re.compile(f"[{_CJK}]")
_SPACE_RE = re.compile(r"\s+")
_P = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime, the rolling hash's base


def normalise(text: str) -> str:
    """NFKC, case-folded, runs of whitespace as one space, stripped: the text whose hash
    exact deduplication compares (``"Hello  World\\n"`` and ``"hello world"`` are equal)."""
    return _SPACE_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def words(text: str) -> list[str]:
    """The words of ``text`` (see the module docstring)."""
    return WORD_RE.findall(text)


class _HashCache(dict):
    """word -> xxh64; bounded (cleared at 2**20 entries)."""

    def __missing__(self, key: str) -> int:
        if len(self) >= 1 << 20:
            self.clear()
        value = self[key] = xxhash.xxh64_intdigest(key.encode("utf-8"))
        return value


_CACHE = _HashCache()


def word_hashes(ws: list[str]) -> np.ndarray:
    """uint64 ``[len(ws)]``: xxHash64 of every word."""
    return np.fromiter(map(_CACHE.__getitem__, ws), dtype=np.uint64, count=len(ws))


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """uint64 ``[max(0, len(hashes) - n + 1)]``: the hash of every word n-gram,
    ``sum(h[i + j] * P**(n - 1 - j))`` modulo 2**64 (``P`` the 64-bit FNV prime)."""
    m = len(hashes) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    out = hashes[:m].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            out *= _P
            out += hashes[j : j + m]
    return out
