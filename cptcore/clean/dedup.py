"""Exact and near-duplicate removal (``"dedup"``-stage filters, see
:class:`cptcore.specs.FilterSpec`): the workers compute a signature per document, the
driver keeps the first document of every duplicate group, in input order.

* ``exact``: BLAKE2b-128 of the normalised text (:func:`cptcore.clean.text.normalise`).
* ``near``: MinHash of the word n-gram shingles (datasketch ``MinHash``, seeded, 32-bit
  affine permutations), cut into the LSH bands datasketch's ``MinHashLSH`` chooses for
  ``threshold`` and ``num_perm`` (Broder 1997; bands and rows minimising false positives
  + false negatives: 9 bands of 13 rows at 0.8 and 128). A document one of whose bands
  (xxh64 of the band's values) equals a band of an earlier kept document is removed:
  the decisions of datasketch's ``MinHashLSH.query`` / ``insert`` on the kept documents.

Memory: both look their keys up in a :class:`cptcore.clean.index.SeenIndex`, a SQLite
file in ``FilterContext.scratch`` (the run's ``state/`` folder) with a bounded page
cache (``index_cache_mb``, default 16 MiB each), so the driver's memory does not grow
with the number of documents (it held ~2.8 kB per kept document for ``near``, ~150
bytes for ``exact`` in memory before). On disk: ~0.3 kB (near) and ~50 bytes (exact)
per kept document while the run lasts.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .index import SeenIndex
from .text import ngram_hashes, normalise, word_hashes, words


def _same(x):
    """Identity hash for datasketch: shingles are already 32-bit hashes."""
    return x


class _Indexed:
    """A dedup filter whose "seen" keys live in a :class:`SeenIndex` file
    ``scratch/index-NAME.sqlite`` (a temporary folder when ``scratch`` is None), opened
    at the first ``check`` / ``add`` (after ``cpt clean`` has made its output folder) and
    deleted by ``close``."""

    name = "dedup"

    def _init_index(self, scratch: str | None, cache_mb: int) -> None:
        self.scratch, self.cache_mb = scratch, cache_mb
        self._seen = None
        self._tmp = None

    def index(self) -> SeenIndex:
        if self._seen is None:
            folder = self.scratch
            if folder is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="cpt-clean-")
                folder = self._tmp.name
            self._seen = SeenIndex(Path(folder) / f"index-{self.name}.sqlite", self.cache_mb)
        return self._seen

    def keys(self, sig: np.ndarray) -> list[bytes]:
        raise NotImplementedError

    def first(self, sig: np.ndarray) -> int | None:
        """The key of the earliest kept document sharing an index key with ``sig``.
        ``check`` only looks (the driver calls ``add`` for the documents the whole chain
        keeps, so no filter remembers a document a later one removed)."""
        return self.index().first(self.keys(sig))

    def add(self, sig: np.ndarray, key: int) -> None:
        self.index().add(self.keys(sig), key)

    def close(self) -> None:
        if self._seen is not None:
            self._seen.close()
            self._seen = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __getstate__(self):  # workers only compute signatures
        state = dict(self.__dict__)
        state.update(_seen=None, _tmp=None)
        return state


class ExactDedup(_Indexed):
    """``signature(text)``: uint64 ``[2]`` (BLAKE2b-128 of the normalised text); index
    key: its 16 bytes."""

    name = "exact"

    def __init__(self, scratch: str | None = None, cache_mb: int = 16) -> None:
        self._init_index(scratch, cache_mb)

    def signature(self, text: str) -> np.ndarray:
        digest = hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).digest()
        return np.frombuffer(digest, dtype=np.uint64).copy()

    def keys(self, sig: np.ndarray) -> list[bytes]:
        return [sig.tobytes()]

    def check(self, sig: np.ndarray, key: int) -> str | None:
        first = self.first(sig)
        if first is not None:
            return f"same normalised text (as document #{first})"
        return None


#: Largest ``near.num_perm``: the signature's batch temporary is ``[4096 shingles,
#: num_perm]`` uint64, 32 kB per permutation (128 MB at 4096; the estimate's standard
#: error is ~1/sqrt(num_perm), 1.6 % there, against datasketch's default 128).
MAX_NUM_PERM = 4096


@dataclass(frozen=True)
class NearOptions:
    """MinHash LSH near-duplicate removal."""

    threshold: float = 0.8  # estimated Jaccard similarity of shingle sets
    num_perm: int = 128  # MinHash permutations (signature length)
    ngram: int = 5  # words per shingle (a CJK character is a word)


class NearDedup(_Indexed):
    """``signature(text)``: uint32 ``[num_perm]`` MinHash hash values of the word
    ``ngram``-grams of the normalised text (:func:`cptcore.clean.text.normalise`: NFKC,
    case-folded, whitespace runs as one; as datatrove normalises before its MinHash), so
    case, full-width forms and spacing do not hide a near copy; index keys: one
    per LSH band, the band number (2 bytes) + xxh64 of the band's values (8 bytes).

    Raises:
        ConfigError: ``threshold`` not in (0, 1), ``num_perm`` not in 2..MAX_NUM_PERM,
            ``ngram`` < 1.
    """

    name = "near"

    def __init__(self, options: NearOptions, seed: int, scratch: str | None = None, cache_mb: int = 16):
        from ..errors import ConfigError

        if not 0.0 < options.threshold < 1.0:
            raise ConfigError(f"near.threshold must be between 0 and 1, got {options.threshold}")
        if not 2 <= options.num_perm <= MAX_NUM_PERM or options.ngram < 1:
            raise ConfigError(f"near.num_perm must be between 2 and {MAX_NUM_PERM} and near.ngram >= 1, got "
                              f"{options.num_perm} and {options.ngram} (each worker's MinHash temporary is 32 kB per permutation)")
        self.o = options
        self.seed = seed
        self._perm = None
        self._ranges = None
        self._init_index(scratch, cache_mb)

    def __getstate__(self):
        state = super().__getstate__()
        state["_perm"] = None
        return state

    def signature(self, text: str) -> np.ndarray:
        from datasketch import MinHash

        if self._perm is None:
            self._perm = MinHash(self.o.num_perm, seed=self.seed, scheme="affine32").permutations
        hashes = word_hashes(words(normalise(text)))  # case, width and spacing do not count (as exact's)
        grams = ngram_hashes(hashes, min(self.o.ngram, max(1, len(hashes))))
        m = MinHash(self.o.num_perm, seed=self.seed, hashfunc=_same, permutations=self._perm, scheme="affine32")
        shingles = (grams >> np.uint64(32)).astype(np.uint32)
        for i in range(0, len(shingles), 4096):  # bounds the [shingles, num_perm] temporary
            m.update_batch(shingles[i : i + 4096].tolist())
        return np.asarray(m.hashvalues, dtype=np.uint32)

    def bands(self) -> list[tuple[int, int]]:
        """``[(start, end)]`` of each band in the signature (datasketch's choice)."""
        if self._ranges is None:
            from datasketch import MinHashLSH

            self._ranges = [tuple(r) for r in MinHashLSH(threshold=self.o.threshold, num_perm=self.o.num_perm).hashranges]
        return self._ranges

    def keys(self, sig: np.ndarray) -> list[bytes]:
        import xxhash

        sig = np.ascontiguousarray(sig, dtype=np.uint32)
        return [b.to_bytes(2, "little") + xxhash.xxh64_digest(sig[s:e].tobytes()) for b, (s, e) in enumerate(self.bands())]

    def check(self, sig: np.ndarray, key: int) -> str | None:
        first = self.first(sig)
        if first is not None:
            return f"near duplicate (of document #{first})"
        return None
