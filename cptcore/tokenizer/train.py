"""Train a SentencePiece model on domain text (``cpt tokenizer train``).

Input files are streamed line by line into ``SentencePieceTrainer`` through its
``sentence_iterator``; a corpus larger than ``input_sentence_size`` sentences is sampled
by SentencePiece itself (reservoir sampling when ``shuffle_input_sentence`` is on, the
first N sentences otherwise), so memory is bounded by the sample, not the corpus.

A "sentence" is one non-empty line of a document: a line of a ``.txt`` file, or a line of
the ``text`` field of a ``.jsonl`` record. Lines longer than ``max_sentence_length`` bytes
are not passed to the trainer (SentencePiece would skip them too) and are counted in
the returned stats.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError, CptError, DataError
from ..model.outdir import prepare_out_dir
from ..data import readers


@dataclass(frozen=True)
class TrainOptions:
    """SentencePiece trainer options (names follow ``spm_train`` flags).

    ``vocab_size``: pieces in the model, meta pieces included. ``model_type``: ``bpe``
    (mergeable into LLaMA-style BPE models) or ``unigram``/``char``/``word``.
    ``character_coverage``: fraction of characters covered by single-character pieces
    (0.9995 is the SentencePiece recommendation for CJK). ``byte_fallback``: unknown
    characters become ``<0x..>`` byte pieces. ``max_sentence_length``: bytes.
    ``input_sentence_size``: sentences sampled for training (0 = all).
    """

    vocab_size: int = 8000
    model_type: str = "bpe"
    character_coverage: float = 0.9995
    byte_fallback: bool = False
    max_sentence_length: int = 16384
    input_sentence_size: int = 2_000_000
    shuffle_input_sentence: bool = True
    split_digits: bool = True
    seed: int = 0
    num_threads: int = 2
    text_field: str = "text"


@dataclass
class TrainStats:
    files: list[str] = field(default_factory=list)
    sentences: int = 0
    skipped_too_long: int = 0
    skipped_empty: int = 0  # empty files and empty documents
    seconds: float = 0.0


MODEL_TYPES = ("bpe", "unigram", "char", "word")
#: SentencePiece's own bounds (src/trainer_interface.cc, ``TrainerInterface::VerifySpec``)
CHARACTER_COVERAGE = (0.98, 1.0)
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1  # set_random_generator_seed takes an unsigned 32-bit int


def check_options(options: TrainOptions) -> None:
    """The numeric options SentencePiece would refuse only once training starts (with a
    message naming its C++ spec, or a traceback for a negative sentence count).

    Raises:
        ConfigError: ``character_coverage`` outside [0.98, 1], ``num_threads`` outside
            [1, 1024], ``max_sentence_length`` < 1 byte, ``input_sentence_size`` < 0 or
            ``seed`` outside [0, 2**32 - 1] (one line naming the ``cpt tokenizer`` flag).
    """
    lo, hi = CHARACTER_COVERAGE
    if not lo <= options.character_coverage <= hi:
        raise ConfigError(f"--character-coverage must be in [{lo}, {hi}] (SentencePiece's range), got {options.character_coverage}")
    if not 1 <= options.num_threads <= MAX_THREADS:
        raise ConfigError(f"--threads must be in [1, {MAX_THREADS}], got {options.num_threads}")
    if options.max_sentence_length < 1:
        raise ConfigError(f"--max-sentence-length must be >= 1 byte, got {options.max_sentence_length}")
    if options.input_sentence_size < 0:
        raise ConfigError(f"--input-sentence-size must be >= 0 (0: all lines), got {options.input_sentence_size}")
    if not 0 <= options.seed <= MAX_SEED:
        raise ConfigError(f"--seed must be in [0, {MAX_SEED}] (SentencePiece's unsigned 32-bit seed), got {options.seed}")


def _documents(path: Path, text_field: str, stats: TrainStats) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of every document of one file: JSONL/JSON/Parquet (``.gz`` too)
    through :mod:`cptcore.data.readers`, so bad records fail exactly as in
    ``cpt prepare``; plain text streamed line by line (one document per line)."""
    if readers.file_format(str(path)) != "text" or str(path).endswith(".gz"):
        for rec in readers.iter_file(str(path), text_field):
            if rec.error in ("empty document", "empty file"):
                stats.skipped_empty += 1  # nothing to learn from; counted, not fatal
                continue
            if rec.error:
                raise DataError(rec.error, path=rec.path, line=rec.line)
            text = rec.text if rec.text is not None else (rec.source or "") + (rec.target or "")
            yield rec.line, text
        return
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # UTF-8 byte-order mark
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DataError(f"invalid UTF-8 (byte {exc.start})", path=str(path), line=number) from None


def iter_sentences(paths: list[Path], text_field: str, max_bytes: int, stats: TrainStats) -> Iterator[str]:
    """Yield the non-empty lines of every document, counting them in ``stats``.

    Raises:
        DataError: a file is missing, not UTF-8, or a JSON record is malformed, not an
            object or lacks a string ``text_field`` (``path:line: problem``); or no
            input holds any text.
    """
    for path in paths:
        if not path.is_file():
            raise DataError("input file not found", path=str(path))
        for _line, text in _documents(path, text_field, stats):
            for sentence in text.split("\n"):
                if not sentence.strip():
                    continue
                if len(sentence.encode("utf-8")) > max_bytes:
                    stats.skipped_too_long += 1
                    continue
                stats.sentences += 1
                yield sentence
    if stats.sentences == 0:
        names = ", ".join(str(p) for p in paths)
        why = "every file is empty or blank"
        if stats.skipped_too_long:
            why = f"{stats.skipped_too_long} lines longer than --max-sentence-length {max_bytes} bytes were skipped, the rest is empty or blank"
        raise DataError(f"no text to train on in {names} ({why})")


def _guarded(sentences: Iterator[str], failure: list[CptError]) -> Iterator[str]:
    """Stop at the first bad line and keep its error: an exception raised inside
    SentencePiece's C++ reader would come back as an opaque RuntimeError."""
    try:
        yield from sentences
    except CptError as exc:
        failure.append(exc)


def train_sentencepiece(
    inputs: list[str | Path], out_dir: str | Path, options: TrainOptions = TrainOptions(), overwrite: bool = False
) -> tuple[Path, TrainStats]:
    """Train a SentencePiece model and write ``out_dir/tokenizer.model`` plus
    ``out_dir/train_report.json`` (options and counts).

    Returns:
        (path of ``tokenizer.model``, stats: sentences seen, lines skipped as too long,
        training time in seconds).

    Raises:
        ConfigError: a numeric option out of range (:func:`check_options`).
        CptError: bad option (unknown model type, vocab size < 2), ``out_dir`` not empty
            without ``overwrite``, or SentencePiece refusing the data (e.g. the vocab size
            is larger than the text supports).
        DataError: unreadable input (see :func:`iter_sentences`).
    """
    import sentencepiece as spm

    if options.model_type not in MODEL_TYPES:
        raise CptError(f"unknown model type {options.model_type!r} (choose from {', '.join(MODEL_TYPES)})")
    if options.vocab_size < 2:
        raise CptError(f"vocab size must be at least 2, got {options.vocab_size}")
    check_options(options)
    if not inputs:
        raise CptError("no input files given")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise DataError("input file not found", path=str(p))
    out = prepare_out_dir(out_dir, overwrite)
    stats = TrainStats(files=[str(p) for p in paths])
    model_path = out / "tokenizer.model"
    spm.set_random_generator_seed(options.seed)
    failure: list[CptError] = []
    t0 = time.perf_counter()
    with open(model_path, "wb") as writer:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_guarded(iter_sentences(paths, options.text_field, options.max_sentence_length, stats), failure),
                model_writer=writer,
                vocab_size=options.vocab_size,
                model_type=options.model_type,
                character_coverage=options.character_coverage,
                byte_fallback=options.byte_fallback,
                max_sentence_length=options.max_sentence_length,
                input_sentence_size=options.input_sentence_size,
                shuffle_input_sentence=options.shuffle_input_sentence,
                split_digits=options.split_digits,
                num_threads=options.num_threads,
                minloglevel=2,
            )
        except RuntimeError as exc:
            failure.append(CptError(f"SentencePiece training failed: {' '.join(str(exc).split())}"))
    if failure:
        model_path.unlink(missing_ok=True)
        raise failure[0]
    stats.seconds = time.perf_counter() - t0
    report = {"options": asdict(options), "stats": asdict(stats), "model": str(model_path)}
    (out / "train_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return model_path, stats
