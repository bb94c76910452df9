"""Language identification with lingua (``lingua-language-detector``: n-gram models that
ship inside the wheel, offline; Stahl 2021). Only the candidate languages' models are
loaded, on first use, in each worker."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

#: Languages the detector weighs besides the kept ones (ISO 639-1).
DEFAULT_CANDIDATES = ("en", "zh", "ja", "ko", "fr", "de", "es", "ru", "pt", "it", "ar", "vi")


@dataclass(frozen=True)
class LanguageOptions:
    """Keep documents whose most likely language is one of ``keep``."""

    keep: tuple[str, ...] = ()  # ISO 639-1 codes, e.g. ["zh"]; also --language zh
    candidates: tuple[str, ...] = ()  # languages the detector chooses among (empty: keep + DEFAULT_CANDIDATES)
    max_chars: int = 2000  # characters of the document looked at (from its start)
    keep_unknown: bool = True  # lingua cannot decide (e.g. only digits): keep


def _language(code: str):
    from lingua import IsoCode639_1, Language

    iso = getattr(IsoCode639_1, str(code).upper(), None)
    if iso is None:
        raise ConfigError(f"language: unknown ISO 639-1 code {code!r} (e.g. zh, en, ja)")
    return Language.from_iso_code_639_1(iso)


class LanguageFilter:
    """``check(text)``: ``"detected en"`` when the most likely language is not kept.

    Raises:
        ConfigError: no kept language, an unknown ISO 639-1 code, fewer than two
            candidate languages.
    """

    def __init__(self, options: LanguageOptions):
        if not options.keep:
            raise ConfigError("the language filter needs the languages to keep: --language zh (or --set language.keep=[zh])")
        self.keep = tuple(str(c).lower() for c in options.keep)
        cands = tuple(str(c).lower() for c in options.candidates) or DEFAULT_CANDIDATES
        self.candidates = tuple(dict.fromkeys(self.keep + cands))
        for code in self.candidates:
            _language(code)  # validate now, in the driver
        if len(self.candidates) < 2:
            raise ConfigError("language: give at least two candidate languages")
        self.o = options
        self._detector = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_detector"] = None
        return state

    def check(self, text: str) -> str | None:
        if self._detector is None:
            from lingua import LanguageDetectorBuilder

            self._detector = LanguageDetectorBuilder.from_languages(*map(_language, self.candidates)).build()
        lang = self._detector.detect_language_of(text[: self.o.max_chars])
        if lang is None:
            return None if self.o.keep_unknown else "undetermined (lingua could not decide)"
        code = lang.iso_code_639_1.name.lower()
        return None if code in self.keep else f"detected {code}"
