"""Tokenizing chunks of records, in this process or in a pool of worker processes.

A chunk is a list of records; the worker returns, per record, either an error reason or
its tokens, packed as one flat int32 array plus lengths (cheap to send between
processes). Chunks are submitted ahead with a bounded look-ahead per input, so memory
stays bounded and the output order is the input order (deterministic).
"""

from __future__ import annotations

import collections
import itertools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .readers import Record
from .sft import SkipSample, encode_conversation_counted, normalise
from .token_bytes import byte_table_for, lookup, token_bytes
from .tokenize import encode_source_target, load_tokenizer


@dataclass
class ChunkResult:
    """Per record: ``reasons[i]`` (None when fine) and its tokens
    ``ids[starts[i]:starts[i+1]]`` (labels likewise; ``labels`` None = labels == ids)."""

    reasons: list
    ids: np.ndarray
    labels: np.ndarray | None
    starts: np.ndarray
    cut: list | None = None  # per record: tokens left out by SFT turn cutting (None: 0)
    nbytes: np.ndarray | None = None  # int32, UTF-8 bytes per token (cptcore.data.token_bytes)


def _flatten(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    starts = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32, count=int(starts[-1]))
    return flat, starts


def pretrain_chunk(tokenize_fn: Callable, tokenizer_path: str, add_bos, add_eos, items: list) -> ChunkResult:
    """``items``: ``(kind, payload)`` with kind ``"text"`` (payload str), ``"pair"``
    (payload ``(source, target)``) or ``"error"`` (payload the reason)."""
    table = byte_table_for(tokenizer_path)
    texts = [p for k, p in items if k == "text"]
    pairs = [p for k, p in items if k == "pair"]
    text_ids = iter(tokenize_fn(texts) if texts else [])
    pair_out = iter(encode_source_target(tokenizer_path, add_bos, add_eos, pairs) if pairs else [])
    ids_list, lab_list, reasons, nb_list = [], [], [], []
    any_pair = bool(pairs)
    for kind, payload in items:
        if kind == "error":
            reasons.append(payload)
            ids_list.append(())
            lab_list.append(())
            nb_list.append(())
        elif kind == "text":
            x = next(text_ids)
            if not len(x):
                reasons.append("no tokens")
            else:
                reasons.append(None)
            ids_list.append(x)
            lab_list.append(x)
            nb_list.append(token_bytes(table, x, payload))
        else:
            x, lab = next(pair_out)
            reasons.append(None)
            ids_list.append(x)
            lab_list.append(lab)
            nb_list.append(token_bytes(table, x, payload[0] + payload[1]))
    ids, starts = _flatten(ids_list)
    labels = _flatten(lab_list)[0] if any_pair else None
    return ChunkResult(reasons, ids, labels, starts, nbytes=_flatten(nb_list)[0])


def sft_chunk(tokenizer_path: str, template: Any, options: Any, max_length: int, items: list) -> ChunkResult:
    """``items``: ``("obj", row)`` or ``("error", reason)``; renders and tokenizes each
    conversation (:func:`cptcore.data.sft.encode_conversation`)."""
    tok = load_tokenizer(tokenizer_path)
    table = byte_table_for(tokenizer_path)
    ids_list, lab_list, reasons, cut = [], [], [], []
    for kind, payload in items:
        cut.append(0)
        if kind == "error":
            reasons.append(payload)
            ids_list.append(())
            lab_list.append(())
            continue
        try:
            ids, labels, cut[-1] = encode_conversation_counted(tok, template, options, normalise(payload), max_length)
        except SkipSample as exc:
            reasons.append(str(exc))
            ids_list.append(())
            lab_list.append(())
            continue
        reasons.append(None)
        ids_list.append(ids)
        lab_list.append(labels)
    ids, starts = _flatten(ids_list)
    nbytes = lookup(table, ids)  # rule 1 only
    return ChunkResult(reasons, ids, _flatten(lab_list)[0], starts, cut, nbytes)


_JOB: tuple | None = None  # (fn, args) of the running preparation, inherited by forked workers


def _init_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _run_job(items: list) -> ChunkResult:
    fn, args = _JOB  # type: ignore[misc]
    return fn(*args, items)


class Executor:
    """Runs ``fn(*args, items)`` on chunks: in one background thread (``num_proc <= 1``:
    the Rust tokenizer releases the GIL and uses its own threads while this process
    reads and packs) or in a ``fork`` pool of ``num_proc`` processes. ``fn`` and ``args``
    reach the workers through the fork, not through pickling, so plugin templates and
    tokenize functions that are closures work too; only the chunks are pickled."""

    def __init__(self, num_proc: int, fn: Callable, args: tuple):
        global _JOB
        self.num_proc = max(1, num_proc)
        self.fn, self.args = fn, args
        self.pool = None
        self.thread = None
        if self.num_proc > 1:
            import multiprocessing as mp

            _JOB = (fn, args)
            # The Rust tokenizer prints a 4-line warning in every forked child when the
            # parent already used its thread pool, unless TOKENIZERS_PARALLELISM is set
            # at fork time (setting it in the initializer is too late).
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                self.pool = mp.get_context("fork").Pool(self.num_proc, initializer=_init_worker)
            finally:
                if saved is None:
                    del os.environ["TOKENIZERS_PARALLELISM"]
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = saved
        else:
            from concurrent.futures import ThreadPoolExecutor

            self.thread = ThreadPoolExecutor(1, thread_name_prefix="cpt-tokenize")

    def submit(self, items: list):
        if self.pool is None:
            return _Future(self.thread.submit(self.fn, *self.args, items))
        return self.pool.apply_async(_run_job, (items,))

    def close(self) -> None:
        global _JOB
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
            _JOB = None
        if self.thread is not None:
            self.thread.shutdown(wait=True, cancel_futures=True)
            self.thread = None


class _Future:
    def __init__(self, future: Any):
        self.future = future

    def get(self) -> Any:
        return self.future.result()


class ChunkStream:
    """Records of one input, tokenized in chunks with a bounded look-ahead.

    Iterating yields ``(record, reason, ids, labels, cut, nbytes)`` in file order;
    ``reason`` is None for usable records (``ids``/``labels`` int32 arrays), else the skip
    reason; ``cut`` counts tokens left out of the record (SFT turn cutting), else 0;
    ``nbytes`` int32 bytes per token (None when the chunk function gave none).
    """

    def __init__(
        self,
        records: Iterator[Record],
        to_item: Callable[[Record], tuple],
        executor: Executor,
        chunk_records: int = 1000,
        chunk_chars: int = 4_000_000,
    ):
        self.records = records
        self.to_item = to_item
        self.executor = executor
        self.chunk_records = chunk_records
        self.chunk_chars = chunk_chars
        self.lookahead = max(2, 2 * executor.num_proc)
        self._pending: collections.deque = collections.deque()
        self._exhausted = False

    def _fill(self) -> None:
        while not self._exhausted and len(self._pending) < self.lookahead:
            recs, items, chars = [], [], 0
            for rec in self.records:
                item = self.to_item(rec)
                recs.append(rec)
                items.append(item)
                chars += rec.nbytes
                if len(recs) >= self.chunk_records or chars >= self.chunk_chars:
                    break
            else:
                self._exhausted = True
            if recs:
                self._pending.append((recs, self.executor.submit(items)))

    def __iter__(self):
        while True:
            self._fill()
            if not self._pending:
                return
            recs, fut = self._pending.popleft()
            res: ChunkResult = fut.get()
            for i, rec in enumerate(recs):
                a, b = int(res.starts[i]), int(res.starts[i + 1])
                ids = res.ids[a:b]
                labels = ids if res.labels is None else res.labels[a:b]
                nbytes = None if res.nbytes is None else res.nbytes[a:b]
                yield rec, res.reasons[i], ids, labels, (res.cut[i] if res.cut else 0), nbytes
