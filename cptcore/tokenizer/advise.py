"""``cpt tokenizer advise``: how many domain tokens to add, measured per candidate size.

For every size in ``sizes`` a domain SentencePiece BPE model of that size is merged into
the base tokenizer (SentencePiece proto merge or byte-level vocab + merges, exactly as
``cpt tokenizer expand`` does, :mod:`.expand_sp` / :mod:`.expand_bpe`), and measured:

* tokens per character and UTF-8 bytes per token on each domain corpus (held-out
  documents, see below);
* on each retained set: tokens before/after and documents whose ids changed (new pieces
  must not change how retained text is tokenized; the table says by how much they do);
* new embedding rows (the merged vocabulary minus the model's rows) and, with a model,
  the added parameters (rows × hidden, twice when input and output are untied), their
  memory (weights at the model's dtype; training state at 16 bytes per parameter, the
  mixed-precision Adam count of Rajbhandari et al. 2020, ZeRO, §3.1) and the training
  cost per corpus byte: ``6 · (N_non-embedding + hidden · vocab) · tokens/byte`` FLOPs
  (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", C ≈ 6N per token, with
  the output projection counted since its cost grows with the vocabulary).

**One training run, not one per size.** SentencePiece's BPE trainer is greedy: it merges
the most frequent pair, appends the result, and stops when the vocabulary is full; the
vocabulary size only decides *when it stops*. A model of size S therefore holds the
meta pieces, the first ``S - meta - chars`` merged pieces of a larger model trained on
the same sample with the same seed, and the same character pieces (which SentencePiece
appends after the merges; their number depends on ``character_coverage``, not on the
size). :func:`derive_pieces` cuts the largest model that way (tested against models
trained at the smaller size: identical pieces). A size below ``meta + chars`` cannot be
trained by SentencePiece at all and is reported as too small.

**Held out.** Every ``heldout_every``-th document of each corpus (1-based positions
``k, 2k, ...``) is measured and not trained on; with ``heldout_every=0`` the corpora are
measured on their own training text (optimistic). ``heldout_every=1`` (measure every
document, train on none) and negative values are refused.

**The knee.** Over the base and the sizes in order of added rows, the marginal gain of
step *i* is the relative fall of the domain corpora's tokens/char (all corpora together)
per 1,000 tokens added to the vocabulary (intermediate BPE tokens included):
``(t[i-1] - t[i]) / t[i-1] / ((added[i] - added[i-1]) / 1000)``. The
recommended size is the last one reached before the first step whose gain is below
``knee_gain`` (default 1 %, a fraction in [0, 1]): one more 1,000 tokens would buy less
than that. If the first size already gains less, the advice is not to expand; if no step
falls below, the largest size is recommended and the report says to try larger ones.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, CptError, DataError
from .report import read_eval_texts
from .sources import Candidate, load_model_proto
from .expand import _folder_specials, detect_method
from .expand_bpe import expand_byte_level_bpe, load_byte_level_bpe
from .expand_sp import merge_into_sentencepiece, sentencepiece_file
from .train import TrainOptions, check_options, train_sentencepiece

DEFAULT_SIZES = (1000, 2000, 4000, 8000, 16000)
KNEE_GAIN = 0.01
#: bytes per parameter of training state: fp32 master + fp32 Adam m, v + 16-bit weight
#: and gradient (Rajbhandari et al. 2020, ZeRO, section 3.1)
TRAIN_BYTES_PER_PARAM = 16
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
BATCH_DOCS = 256

Encoder = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class TextSet:
    """A named corpus or retained set: its documents and their size."""

    name: str
    path: str
    texts: tuple[str, ...]
    chars: int
    bytes: int


def parse_named(values: list[str], flag: str) -> list[tuple[str, Path]]:
    """``["zh=law.jsonl", ...]`` -> ``[("zh", Path("law.jsonl")), ...]``.

    Raises:
        CptError: a value without ``NAME=``, an empty name, or a name given twice.
    """
    out: list[tuple[str, Path]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise CptError(f"{flag} expects NAME=FILE, got {value!r}")
        if name in {n for n, _ in out}:
            raise CptError(f"{flag}: name {name!r} given twice")
        out.append((name, Path(path)))
    return out


def parse_sizes(text: str) -> list[int]:
    """``"1000,2000"`` -> ``[1000, 2000]`` (sorted, unique).

    Raises:
        CptError: not a comma-separated list of positive integers.
    """
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise CptError(f"--sizes expects comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 2:
        raise CptError(f"--sizes expects sizes of at least 2, got {text!r}")
    return sizes


def load_text_set(name: str, path: Path) -> TextSet:
    """Read ``path`` like ``cpt tokenizer expand --eval-text`` does.

    Raises:
        DataError: missing/unreadable file or bad record (``path:line``), or no text.
    """
    texts = tuple(read_eval_texts(path))
    if not texts:
        raise DataError("no text in this file", path=str(path))
    return TextSet(name, str(path), texts, sum(map(len, texts)), sum(len(t.encode("utf-8")) for t in texts))


def split_heldout(ts: TextSet, every: int) -> tuple[list[str], TextSet]:
    """(training documents, measured set): every ``every``-th document is measured.

    A corpus with fewer than ``every`` documents is measured on all of them and trained
    on all of them (``every=0`` does the same for every corpus).
    """
    if every <= 0 or len(ts.texts) < every:
        return list(ts.texts), ts
    held = tuple(t for i, t in enumerate(ts.texts, start=1) if i % every == 0)
    train = [t for i, t in enumerate(ts.texts, start=1) if i % every != 0]
    return train, TextSet(ts.name, ts.path, held, sum(map(len, held)), sum(len(t.encode("utf-8")) for t in held))


def derive_pieces(model_file: str | Path, size: int) -> list[str] | None:
    """NORMAL pieces (id order) of the size-``size`` SentencePiece BPE model that
    training on the same sample would give, cut from the larger model ``model_file``
    (see the module docstring); ``None`` when ``size`` is below meta + character pieces.

    Raises:
        CptError: the model is not BPE, or ``size`` exceeds its size.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = load_model_proto(model_file)
    if proto.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        raise CptError(f"{model_file}: sizes can only be derived from a SentencePiece BPE model")
    if size > len(proto.pieces):
        raise CptError(f"size {size} is larger than the trained model ({len(proto.pieces)} pieces)")
    normal = sp_pb2.ModelProto.SentencePiece.NORMAL
    meta = sum(1 for p in proto.pieces if p.type != normal)
    pieces = [p.piece for p in proto.pieces if p.type == normal]
    first_char = next((i for i, p in enumerate(pieces) if len(p) == 1), len(pieces))
    merged, chars = pieces[:first_char], pieces[first_char:]
    keep = size - meta - len(chars)
    if keep < 0:
        return None
    return merged[:keep] + chars


def _bpe_encoder(tokenizer_json: dict) -> Encoder:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(tokenizer_json))
    return lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)] if texts else []


def _sp_encoder(model_bytes: bytes) -> Encoder:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    return lambda texts: sp.encode(list(texts)) if texts else []


def _batches(texts, n=BATCH_DOCS):
    for i in range(0, len(texts), n):
        yield list(texts[i : i + n])


def count_tokens(encode: Encoder, ts: TextSet) -> int:
    return sum(len(ids) for batch in _batches(ts.texts) for ids in encode(batch))


def retained_ids(encode: Encoder, ts: TextSet) -> list:
    """Token ids of every document as int32 numpy arrays (compact, comparable)."""
    import numpy as np

    return [np.asarray(ids, dtype=np.int32) for batch in _batches(ts.texts) for ids in encode(batch)]


def compare_retained(encode: Encoder, ts: TextSet, base_ids: list) -> dict[str, Any]:
    """Tokens after, and documents whose ids differ from ``base_ids``."""
    import numpy as np

    tokens = changed = 0
    i = 0
    for batch in _batches(ts.texts):
        for ids in encode(batch):
            arr = np.asarray(ids, dtype=np.int32)
            tokens += len(arr)
            changed += int(not np.array_equal(arr, base_ids[i]))
            i += 1
    before = sum(len(a) for a in base_ids)
    return {"tokens": tokens, "delta": tokens - before, "changed_docs": changed, "docs": len(base_ids)}


def model_facts(model_dir: str | Path) -> dict[str, Any]:
    """Hidden size, rows, tying, dtype and parameter counts of a Hugging Face model
    folder, from ``config.json`` alone (the model is built on the ``meta`` device; no
    weights are read).

    Raises:
        CptError: no ``config.json`` in ``model_dir``.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    mdir = Path(model_dir)
    if not (mdir / "config.json").is_file():
        raise CptError(f"no model in {mdir} (config.json missing)")
    cfg = AutoConfig.from_pretrained(mdir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is None or out.weight is emb
    rows, hidden = emb.shape
    emb_params = rows * hidden * (1 if tied else 2)
    dtype = str(getattr(cfg, "torch_dtype", None) or "float32").replace("torch.", "")
    return {
        "model": str(mdir),
        "hidden_size": hidden,
        "rows": rows,
        "tied": tied,
        "dtype": dtype,
        "params": total,
        "non_embedding_params": total - emb_params,
    }


def _vocab_size(base: Path, method: str) -> int:
    if method == "sentencepiece":
        return len(load_model_proto(sentencepiece_file(base)).pieces)
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(base / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def _cost(facts: dict[str, Any], vocab: int, tokens_per_byte: float) -> float:
    """Training FLOPs per corpus byte (module docstring)."""
    return 6.0 * (facts["non_embedding_params"] + facts["hidden_size"] * vocab) * tokens_per_byte


def knee(rows: list[dict[str, Any]], base_tpc: float, gain: float) -> dict[str, Any]:
    """The recommended size (module docstring). ``rows`` are the per-size rows in order
    of ``added``, each with ``tokens_per_char`` (all corpora) and ``added`` (tokens the
    vocabulary grew by, intermediate BPE tokens included).

    Returns:
        ``{"size", "rule", "gains"}``; ``size`` is ``None`` when no expansion is
        advised. ``gains[i]`` is step *i*'s relative tokens/char fall per 1,000 rows.
    """
    rule = (
        f"the last size before one more 1,000 added tokens cuts tokens/char by less than {gain:.1%} "
        "(relative, all domain corpora together)"
    )
    prev_t, prev_r, gains = base_tpc, 0, []
    recommended, note = None, ""
    stopped = False
    for row in rows:
        step = row["added"] - prev_r
        g = (prev_t - row["tokens_per_char"]) / prev_t / (step / 1000) if step > 0 and prev_t else 0.0
        gains.append(round(g, 5))
        if not stopped:
            if g < gain:
                stopped = True
            else:
                recommended = row["size"]
        prev_t, prev_r = row["tokens_per_char"], row["added"]
    if recommended is None:
        note = "the smallest size already gains less than the threshold: expansion is not worth it on this measure"
    elif not stopped:
        note = "every step gains more than the threshold: try larger sizes"
    return {"size": recommended, "rule": rule, "threshold": gain, "gains": gains, "note": note}


def _train_domain_model(train_texts: list[str], size: int, workdir: Path, options: Any) -> tuple[Path, Any]:
    from dataclasses import replace

    src = workdir / "domain_train.txt"
    with open(src, "w", encoding="utf-8") as fh:
        for text in train_texts:
            fh.write(text.replace("\r", "\n"))
            fh.write("\n")
    return train_sentencepiece([src], workdir / "sp", replace(options, vocab_size=size, model_type="bpe"))


def advise(
    base: str | Path,
    corpora: list[tuple[str, Path]],
    retain: list[tuple[str, Path]] = (),
    sizes: list[int] = DEFAULT_SIZES,
    model: str | Path | None = None,
    knee_gain: float = KNEE_GAIN,
    heldout_every: int = 10,
    train_options: Any = None,
) -> dict[str, Any]:
    """Measure every size (module docstring) and return the advice report.

    Args:
        base: Hugging Face tokenizer folder (SentencePiece ``tokenizer.model`` or
            byte-level BPE ``tokenizer.json``) or a SentencePiece ``.model`` file.
        corpora, retain: ``(name, file)`` pairs; files read like ``--eval-text``.
        sizes: domain SentencePiece vocabulary sizes (meta pieces included).
        model: Hugging Face model folder for parameters, memory and cost (optional).
        train_options: :class:`~cptcore.tokenizer.train.TrainOptions` (vocab size and
            model type are set here).

    Returns:
        ``{"base", "method", "sizes": [row per size], "knee", "corpora", "retain",
        "model", "seconds", ...}``; every row has ``size``, ``added`` (vocabulary
        growth), ``new_rows`` (beyond the model's embedding rows, else the base's),
        ``pieces_added`` (domain pieces merged), ``vocab``, ``corpora`` (per name: tokens, tokens_per_char, bytes_per_token),
        ``tokens_per_char`` (all corpora), ``retain`` (per name, see
        :func:`compare_retained`) and with a model ``added_params``,
        ``added_weight_bytes``, ``added_train_bytes``, ``flops_per_byte``,
        ``cost_vs_base``. A size too small to train has ``too_small: True`` only.

    Raises:
        ConfigError: ``knee_gain`` outside [0, 1], ``heldout_every`` not 0 or >= 2, or a
            ``train_options`` number out of range
            (:func:`~cptcore.tokenizer.train.check_options`), before any file is read.
        CptError: no corpus, bad base, SentencePiece refusing the largest size.
        DataError: unreadable corpus or retained file.
    """
    t0 = time.perf_counter()
    if not 0 <= knee_gain <= 1:
        raise ConfigError(f"knee_gain (--knee-gain) must be in [0, 1] (a relative fall of tokens/char), got {knee_gain}")
    if heldout_every < 0 or heldout_every == 1:
        raise ConfigError(f"heldout_every (--heldout-every) must be 0 (measure the training text) or >= 2, got {heldout_every}"
                          + (" (1 would measure every document and train on none)" if heldout_every == 1 else ""))
    check_options(train_options or TrainOptions())
    if not corpora:
        raise CptError("give at least one --corpus NAME=FILE")
    sizes = sorted(set(sizes))
    base_p = Path(base)
    method = detect_method(base_p)
    sets = [load_text_set(n, p) for n, p in corpora]
    train_texts: list[str] = []
    measured: list[TextSet] = []
    for ts in sets:
        tr, held = split_heldout(ts, heldout_every)
        train_texts += tr
        measured.append(held)
    kept = [load_text_set(n, p) for n, p in retain]
    facts = model_facts(model) if model is not None else None
    if facts is not None:
        n_base = _vocab_size(base_p, method)
        if facts["rows"] < n_base:
            raise CptError(f"model {model} has {facts['rows']} embedding rows, fewer than the base tokenizer's {n_base} tokens (not its tokenizer?)")

    if method == "sentencepiece":
        sp_file = sentencepiece_file(base_p)
        specials = _folder_specials(base_p) if base_p.is_dir() else set()
        base_enc = _sp_encoder(sp_file.read_bytes())

        def expand(cands):
            model_bytes, res = merge_into_sentencepiece(sp_file, cands, specials)
            return _sp_encoder(model_bytes), res.vocab_before, res.vocab_after, len(res.added)
    else:
        base_enc = _bpe_encoder(load_byte_level_bpe(base_p))

        def expand(cands):
            data, res = expand_byte_level_bpe(base_p, cands)
            return _bpe_encoder(data), res.vocab_before, res.vocab_after, len(res.added)

    opts = train_options or TrainOptions()
    base_tokens = {ts.name: count_tokens(base_enc, ts) for ts in measured}
    base_retained = {ts.name: retained_ids(base_enc, ts) for ts in kept}
    all_chars = sum(ts.chars for ts in measured)
    all_bytes = sum(ts.bytes for ts in measured)
    base_tpc = sum(base_tokens.values()) / all_chars
    rows: list[dict[str, Any]] = []
    vocab_before = None
    with tempfile.TemporaryDirectory(prefix="cpt_advise_") as tmp:
        t_train = time.perf_counter()
        try:
            sp_model, train_stats = _train_domain_model(train_texts, sizes[-1], Path(tmp), opts)
        except DataError as exc:  # its message names the temporary training file: name the corpora
            reason = exc.reason.replace(f" in {Path(tmp) / 'domain_train.txt'}", "")
            raise DataError(f"{reason} (the training documents of {', '.join(ts.path for ts in sets)})") from None
        train_seconds = time.perf_counter() - t_train
        for size in sizes:
            pieces = derive_pieces(sp_model, size)
            if pieces is None:
                rows.append({"size": size, "too_small": True})
                continue
            cands = [Candidate(p, f"size{size}#{i}") for i, p in enumerate(pieces)]
            enc, vocab_before, vocab_after, added = expand(cands)
            model_rows = facts["rows"] if facts else vocab_before
            row: dict[str, Any] = {
                "size": size,
                "pieces_added": added,
                "added": vocab_after - vocab_before,
                "vocab": vocab_after,
                "new_rows": max(0, vocab_after - model_rows),
            }
            row["corpora"] = {}
            total = 0
            for ts in measured:
                n = count_tokens(enc, ts)
                total += n
                row["corpora"][ts.name] = {
                    "tokens": n,
                    "tokens_per_char": round(n / ts.chars, 4),
                    "bytes_per_token": round(ts.bytes / n, 4) if n else None,
                }
            row["tokens_per_char"] = round(total / all_chars, 5)
            row["bytes_per_token"] = round(all_bytes / total, 4) if total else None
            row["retain"] = {ts.name: compare_retained(enc, ts, base_retained[ts.name]) for ts in kept}
            if facts:
                per_row = facts["hidden_size"] * (1 if facts["tied"] else 2)
                row["added_params"] = row["new_rows"] * per_row
                row["added_weight_bytes"] = row["added_params"] * DTYPE_BYTES.get(facts["dtype"], 4)
                row["added_train_bytes"] = row["added_params"] * TRAIN_BYTES_PER_PARAM
                row["flops_per_byte"] = _cost(facts, max(vocab_after, facts["rows"]), total / all_bytes)
            rows.append(row)
    good = [r for r in rows if not r.get("too_small")]
    if not good:
        raise CptError(f"every size is too small for the corpus's character pieces (largest {sizes[-1]})")
    report: dict[str, Any] = {
        "base": str(base_p),
        "method": method,
        "vocab_before": vocab_before,
        "heldout_every": heldout_every,
        "corpora": {
            ts.name: {
                "file": ts.path,
                "docs_measured": len(ts.texts),
                "chars": ts.chars,
                "bytes": ts.bytes,
                "base_tokens": base_tokens[ts.name],
                "base_tokens_per_char": round(base_tokens[ts.name] / ts.chars, 4),
                "base_bytes_per_token": round(ts.bytes / base_tokens[ts.name], 4) if base_tokens[ts.name] else None,
            }
            for ts in measured
        },
        "base_tokens_per_char": round(base_tpc, 5),
        "retain": {ts.name: {"file": ts.path, "docs": len(ts.texts), "base_tokens": sum(len(a) for a in base_retained[ts.name])} for ts in kept},
        "model": facts,
        "sizes": rows,
        "train_seconds": round(train_seconds, 2),
        "train_lines": train_stats.sentences,
        "train_lines_skipped_too_long": train_stats.skipped_too_long,
    }
    if facts:
        base_cost = _cost(facts, facts["rows"], sum(base_tokens.values()) / all_bytes)
        report["base_flops_per_byte"] = base_cost
        for r in good:
            r["cost_vs_base"] = round(r["flops_per_byte"] / base_cost, 4)
    report["knee"] = knee(sorted(good, key=lambda r: r["added"]), base_tpc, knee_gain)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def retained_unchanged(report: dict[str, Any]) -> bool:
    """True when no size changed any retained document's ids."""
    return all(v["changed_docs"] == 0 for r in report["sizes"] if not r.get("too_small") for v in r["retain"].values())


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def fmt_count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if abs(n) >= 1e5 else f"{n:,.0f}"

