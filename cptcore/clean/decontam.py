"""Decontamination: remove training documents that share long word n-grams with named
evaluation sets (``--decontaminate NAME=FILE``), the overlap test of GPT-3 (Brown et
al. 2020, appendix C: 13-grams). Texts are normalised (:func:`~cptcore.clean.text.normalise`)
and split into words (a CJK character is a word) on both sides; the evaluation n-grams
are held as sorted uint64 arrays per set and shipped to the workers. A CJK character is
a word but carries less than one, and statutes quote each other verbatim, so documents
whose words are mostly CJK characters are compared on ``ngram * cjk_ngram_scale``-word
n-grams (13 * 3 = 39 characters; both sizes are taken from every evaluation text), and
their runs of 13 non-CJK words or more (an English passage quoted in Chinese text) on
13-word n-grams too."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, DataError
from .text import CJK_RE, ngram_hashes, normalise, word_hashes, words


@dataclass(frozen=True)
class DecontaminateOptions:
    """Evaluation sets and the overlap that removes a document."""

    sets: dict[str, str] = field(default_factory=dict)  # NAME -> FILE (also --decontaminate NAME=FILE)
    ngram: int = 13  # words per n-gram
    min_matches: int = 1  # distinct shared n-grams that remove a document
    cjk_ngram_scale: int = 3  # mostly-CJK documents: n-grams of ngram * scale characters
    text_field: str = "text"  # field of the evaluation records (others: all their strings)


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def eval_texts(path: str, text_field: str):
    """Yield the texts of one evaluation file (JSONL/JSON/Parquet/text, as ``cpt prepare``
    reads): the ``text_field`` of each record, else every string in it joined.

    Raises:
        DataError: a bad record (``file:line: problem``).
    """
    from ..data import readers

    fmt = readers.file_format(path)
    for rec in readers.iter_file(path, "text" if fmt == "text" else None):
        if rec.error:
            raise DataError(f"evaluation set: {rec.error}", path=rec.path, line=rec.line or None)
        if rec.text is not None:
            yield rec.text
            continue
        value = rec.data.get(text_field) if isinstance(rec.data, dict) else None
        yield value if isinstance(value, str) else "\n".join(_strings(rec.data))


class Decontaminate:
    """``check(text)``: ``"NAME (K shared N-grams)"`` for the first set that overlaps
    (sets in name order), else None. Memory: the sets' distinct n-gram hashes, 8 bytes
    each, twice (word and CJK sizes), in the driver and in every worker.

    Raises:
        ConfigError: no sets, ``ngram``/``min_matches`` < 1, a set file missing or with no
            text of ``ngram`` words.
        DataError: a bad record in a set file (``file:line: problem``).
    """

    def __init__(self, options: DecontaminateOptions):
        if not options.sets:
            raise ConfigError("the decontaminate filter needs evaluation sets: --decontaminate NAME=FILE")
        if options.ngram < 1 or options.min_matches < 1:
            raise ConfigError("decontaminate.ngram and decontaminate.min_matches must be >= 1")
        self.o = options
        self.sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.sizes = (options.ngram, options.ngram * max(1, options.cjk_ngram_scale))
        for name, path in sorted(options.sets.items()):
            if not os.path.isfile(path):
                raise ConfigError(f"--decontaminate {name}={path}: no such file")
            parts: tuple[list, list] = ([], [])
            for t in eval_texts(path, options.text_field):
                hashes = word_hashes(words(normalise(t)))
                for k, n in enumerate(self.sizes):
                    parts[k].append(ngram_hashes(hashes, n))
            tables = tuple(np.unique(np.concatenate(p)) if p else np.zeros(0, np.uint64) for p in parts)
            if len(tables[0]) == 0:
                raise ConfigError(f"--decontaminate {name}={path}: no text of {options.ngram} words or more")
            self.sets[name] = tables

    def check(self, text: str) -> str | None:
        ws = words(normalise(text))
        hashes = word_hashes(ws)
        # (table index, n, the document's distinct n-grams); a mostly-CJK document is
        # compared on CJK-sized n-grams, and its runs of non-CJK words (an English
        # passage in Chinese text) on word-sized ones too
        looks = [(0, self.sizes[0], ngram_hashes(hashes, self.sizes[0]))]
        if len(CJK_RE.findall(text)) * 2 > len(ws):
            n = self.sizes[0]
            cjk = np.concatenate([[0], np.cumsum([CJK_RE.fullmatch(w) is not None for w in ws], dtype=np.int64)])
            latin = looks[0][2][(cjk[n:] - cjk[:-n]) == 0] if len(ws) >= n else looks[0][2]
            looks = [(1, self.sizes[1], ngram_hashes(hashes, self.sizes[1])), (0, n, latin)]
        looks = [(k, n, np.unique(g)) for k, n, g in looks if len(g)]
        for name, tables in self.sets.items():
            found = []
            for k, n, grams in looks:
                table = tables[k]
                if len(table) == 0:
                    continue
                pos = np.searchsorted(table, grams)
                pos[pos == len(table)] = 0
                shared = int((table[pos] == grams).sum())
                if shared:
                    found.append((shared, n))
            if found and sum(c for c, _ in found) >= self.o.min_matches:
                return f"{name} ({', '.join(f'{c} shared {n}-grams' for c, n in found)})"
        return None
