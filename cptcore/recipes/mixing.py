"""How the training sources are mixed: ``data.mixing: rows | tokens | bucketed``.

* ``rows`` (default, today's order bit for bit): :class:`cptcore.train.data.MixedSampler`;
  weights give each source's share of the *rows* of an epoch. :class:`RowsSampler` only
  adds per-source tallies (tokens, rows) for the realised-share report.
* ``tokens``: :class:`TokenMixSampler`; weights give each source's share of the
  *training tokens*. A training token is a **label token** (``labels != -100``): what
  the loss is computed on, so a source whose rows carry long masked prompts (SFT) is not
  under-trained, and for packed CPT rows it is the non-pad tokens up to the masked ones.
  Deterministic stride/deficit scheduling: every next row comes from the source ``i``
  with the smallest ``consumed_tokens_i / weight_i`` (ties: lowest index), i.e. the
  largest deficit ``target_i * total - consumed_i``; a source's rows are taken in a fresh
  permutation per pass (``numpy.random.default_rng([seed, i, pass])``, in order when
  ``data.shuffle`` is false). After any prefix the shares differ from the targets by at
  most one row's tokens per source, so realised shares converge as ``max_row/total``.
* ``bucketed``: :class:`BucketedSampler`, the Colossal-LLaMA-2 bucket-based training
  (hpcaitech/ColossalAI, applications/Colossal-LLaMA-2/README.md, "Bucket-based
  Training": "we divide each sub-dataset into discrete bins. These bins are then
  combined to construct individual data buckets, with one bin contributed by each
  sub-dataset"; its ``prepare_pretrain_dataset.py --num_spliced_dataset_bins`` cuts each
  source in order into ``train[a%:b%]`` parts). Here each source's rows of the epoch (its
  weighted row count as in ``rows`` mode, in stored order, cycling when upsampled) are
  cut in order into ``data.buckets`` near-equal bins (``numpy.array_split``); bucket
  ``b`` is bin ``b`` of every source, shuffled within the bucket
  (``default_rng([seed, epoch, b])``); buckets follow each other in order.

Data parallelism is MixedSampler's: all ranks compute the same global stream, global
micro-batch ``k`` holds ``dp_size * micro_batch_size`` rows and rank ``r`` takes its
``r``-th slice, so ranks see disjoint rows and the same number of steps.

Running out: in ``tokens`` mode a source whose pass ends starts another one (logged
``data: source NAME re-epoched (epoch N)``, counted in its ``epochs``) unless the source
is ``PATH:WEIGHT:norepeat`` or ``data.repeat`` is false: then :class:`DataExhausted` is
raised when the scheduler next needs a row from it, and the trainer stops the run (or
stage) with a checkpoint. In ``bucketed`` mode repeat false stops at the end of the
first epoch; ``rows`` mode refuses repeat false (its epochs up-sample by cycling).

Every sampler's state (``state_dict``, JSON, saved in ``trainer_state.json``) holds the
per-source cursors ``sources: [{tokens, rows, epochs, cursor}]``; resume is exact.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from ..errors import ConfigError, CptError, DataError
from ..train.data import IGNORE_INDEX, MixedDataset, MixedSampler
from ..train.plan import log

MIXING_MODES = ("rows", "tokens", "bucketed")


class DataExhausted(CptError):
    """A source that may not repeat has no rows left (the run stops with a checkpoint)."""


def row_token_counts(ds: Any) -> Any:
    """Label tokens (``labels != -100``) per row of a prepared dataset, int64 ``[rows]``.

    Vectorised over the Arrow ``labels`` list column (one pass, chunk by chunk; nothing
    but one chunk's labels in memory); datasets with an indices mapping fall back to a
    row loop.
    """
    import numpy as np

    if getattr(ds, "_indices", None) is not None:
        return np.asarray([int((np.asarray(ds[i]["labels"]) != IGNORE_INDEX).sum()) for i in range(len(ds))],
                          dtype=np.int64)
    import pyarrow.compute as pc

    out = []
    for chunk in ds.data.column("labels").chunks:
        lens = pc.list_value_length(chunk).to_numpy(zero_copy_only=False).astype(np.int64)
        values = chunk.flatten().to_numpy(zero_copy_only=False)
        csum = np.concatenate([[0], np.cumsum(values != IGNORE_INDEX, dtype=np.int64)])
        ends = np.cumsum(lens)
        out.append(csum[ends] - csum[ends - lens])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def source_names(paths: Sequence[Any]) -> list[str]:
    """Report names of the sources: the folder name, ``NAME-2``... for repeats."""
    names: list[str] = []
    for p in paths:
        base = str(getattr(p, "name", p)) or "source"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


class _Tally:
    """Per-source counters: tokens and rows consumed over all ranks, passes completed."""

    def __init__(self, names: Sequence[str], weights: Sequence[float], token_counts: Sequence[Any]):
        self.names = list(names)
        wsum = sum(weights)
        self.targets = [w / wsum for w in weights]
        self.counts = list(token_counts)
        self.tokens = [0] * len(self.names)
        self.rows = [0] * len(self.names)
        self.epochs = [0] * len(self.names)  # passes started beyond the first (re-epochs)

    def add(self, pairs: Sequence[Sequence[int]]) -> None:
        for s, r in pairs:
            self.tokens[s] += int(self.counts[s][r])
            self.rows[s] += 1

    def report(self) -> dict[str, dict[str, Any]]:
        """``{NAME: {tokens, rows, share, target, epochs}}``; share is of label tokens."""
        total = sum(self.tokens)
        return {n: {"tokens": self.tokens[i], "rows": self.rows[i],
                    "share": self.tokens[i] / total if total else 0.0, "target": self.targets[i],
                    "epochs": self.epochs[i] + 1}
                for i, n in enumerate(self.names)}

    def metrics(self) -> dict[str, float]:
        """``data/NAME/share`` for the step log."""
        total = sum(self.tokens)
        return {f"data/{n}/share": (self.tokens[i] / total if total else 0.0) for i, n in enumerate(self.names)}

    def state(self) -> list[dict[str, int]]:
        return [{"tokens": self.tokens[i], "rows": self.rows[i], "epochs": self.epochs[i]}
                for i in range(len(self.names))]

    def load(self, saved: Any) -> None:
        if not saved:  # a checkpoint from before the tallies: they count from here
            return
        if not isinstance(saved, list) or len(saved) != len(self.names):
            raise ConfigError(f"cannot resume exactly: checkpoint has {len(saved) if isinstance(saved, list) else '?'} "
                              f"data sources, this run has {len(self.names)}")
        for i, s in enumerate(saved):
            self.tokens[i], self.rows[i], self.epochs[i] = int(s["tokens"]), int(s["rows"]), int(s.get("epochs", 0))


class RowsSampler(MixedSampler):
    """``mixing: rows``: :class:`MixedSampler`'s order unchanged, plus the tallies."""

    mode = "rows"

    def __init__(self, data: MixedDataset, micro_batch_size: int, dp_size: int, dp_rank: int, seed: int,
                 shuffle: bool, tally: _Tally, repeat: bool = True):
        super().__init__(data, micro_batch_size, dp_size, dp_rank, seed, shuffle)
        self.tally = tally
        self.repeat = repeat

    def next_batch(self) -> tuple[list[tuple[int, int]], bool]:
        if not self.repeat and self.epoch >= 1:
            raise DataExhausted(f"data: the {self.mode} plan's first epoch is used up and data.repeat is false")
        plan = self.plan(self.epoch)
        start = self.position * self.dp_size * self.mbs
        self.tally.add([tuple(int(x) for x in pair) for pair in plan[start:start + self.dp_size * self.mbs]])
        return super().next_batch()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "mixing": self.mode, "sources": self.tally.state()}

    def load_state_dict(self, state: dict) -> None:
        _check_mode(state, self.mode)
        super().load_state_dict(state)
        if state.get("new_data"):  # checkpointing.new_data: the tallies count from here
            return
        self.tally.load(state.get("sources"))


    def report(self) -> dict[str, dict[str, Any]]:
        """Realised shares (:meth:`_Tally.report`); ``epochs`` is the pass over the plan
        the last row drawn came from (at an epoch's end the next pass has not begun)."""
        drawn = self.epoch + 1 if self.position or not self.epoch else self.epoch
        return {n: {**r, "epochs": drawn} for n, r in self.tally.report().items()}


class BucketedSampler(RowsSampler):
    """``mixing: bucketed`` (Colossal-LLaMA-2 buckets, see the module docstring)."""

    mode = "bucketed"

    def __init__(self, *args: Any, buckets: int = 10, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if buckets < 1:
            raise ConfigError(f"data.buckets must be >= 1, got {buckets}")
        self.buckets = buckets

    def plan(self, epoch: int) -> Any:
        """``[n, 2]`` int64 ``(source, row)`` for ``epoch``: buckets in order, each one bin
        of every source, shuffled within the bucket."""
        import numpy as np

        if self._plan_epoch == epoch:
            return self._plan
        total = sum(self.data.lengths)
        wsum = sum(self.data.weights)
        bins = []
        for i, (n, w) in enumerate(zip(self.data.lengths, self.data.weights)):
            want = int(round(total * w / wsum))
            rows = np.arange(want, dtype=np.int64) % n
            bins.append([np.stack([np.full(len(b), i), b], axis=1) for b in np.array_split(rows, self.buckets)])
        parts = []
        for b in range(self.buckets):
            bucket = np.concatenate([bins[i][b] for i in range(len(bins))]).astype(np.int64)
            if self.shuffle:
                bucket = bucket[np.random.default_rng([self.seed, epoch, b]).permutation(len(bucket))]
            parts.append(bucket)
        self._plan_epoch, self._plan = epoch, np.concatenate(parts).reshape(-1, 2)
        return self._plan


class TokenMixSampler:
    """``mixing: tokens``: token-exact, deterministic, resumable (module docstring).

    Interface of :class:`MixedSampler` (``next_batch``, ``state_dict``,
    ``load_state_dict``, ``epoch``, ``position``). ``epoch`` is the number of passes
    every source has completed (the smallest); ``position`` counts this rank's
    micro-batches since the start (the stream has no epoch-sized plan).
    """

    mode = "tokens"

    def __init__(self, data: MixedDataset, micro_batch_size: int, dp_size: int, dp_rank: int, seed: int,
                 shuffle: bool, tally: _Tally, repeat: Sequence[bool], log: Callable[[str], None] = print):
        self.data = data
        self.mbs, self.dp_size, self.dp_rank = micro_batch_size, dp_size, dp_rank
        self.seed, self.shuffle = seed, shuffle
        self.tally = tally
        self.repeat = list(repeat)
        self.log = log
        self.weights = list(data.weights)
        self.cursor = [0] * len(self.weights)  # rows taken in the current pass
        self.position = 0
        self._perm: dict[int, tuple[int, Any]] = {}
        for i, c in enumerate(tally.counts):
            if int(c.sum()) == 0:
                raise DataError("no label tokens in any row: nothing to mix by tokens", path=tally.names[i])

    @property
    def epoch(self) -> int:
        return min(self.tally.epochs)

    def _row(self, i: int) -> int:
        import numpy as np

        n = self.data.lengths[i]
        if self.cursor[i] >= n:
            if not self.repeat[i]:
                raise DataExhausted(f"data: source {self.tally.names[i]} is used up ({n} rows, repeat false): "
                                    "stopping")
            self.tally.epochs[i] += 1
            self.cursor[i] = 0
            self.log(f"data: source {self.tally.names[i]} re-epoched (epoch {self.tally.epochs[i] + 1})")
        p = self.tally.epochs[i]
        if self._perm.get(i, (None,))[0] != p:
            perm = np.random.default_rng([self.seed, i, p]).permutation(n) if self.shuffle else np.arange(n)
            self._perm[i] = (p, perm)
        row = int(self._perm[i][1][self.cursor[i]])
        self.cursor[i] += 1
        return row

    def report(self) -> dict[str, dict[str, Any]]:
        """Realised shares (:meth:`_Tally.report`); ``epochs`` is each source's pass."""
        return self.tally.report()

    def _draw(self) -> tuple[int, int]:
        tokens = self.tally.tokens
        i = min(range(len(self.weights)), key=lambda k: (tokens[k] / self.weights[k], k))
        row = self._row(i)
        self.tally.add([(i, row)])
        return i, row

    def next_batch(self) -> tuple[list[tuple[int, int]], bool]:
        """This rank's next micro-batch and whether every source completed another pass
        within it.

        Raises:
            DataExhausted: a non-repeating source ran out; the state is left as it was
                before this micro-batch.
        """
        before, epoch = self.state_dict(), self.epoch
        try:
            pairs = [self._draw() for _ in range(self.dp_size * self.mbs)]
        except DataExhausted:
            self.load_state_dict(before)
            raise
        self.position += 1
        return pairs[self.dp_rank * self.mbs:(self.dp_rank + 1) * self.mbs], self.epoch > epoch

    def state_dict(self) -> dict:
        sources = self.tally.state()
        for s, c in zip(sources, self.cursor):
            s["cursor"] = c
        return {"mixing": self.mode, "epoch": self.epoch, "position": self.position, "seed": self.seed,
                "dp_size": self.dp_size, "micro_batch_size": self.mbs, "sources": sources}

    def load_state_dict(self, state: dict) -> None:
        """Restore cursors and tallies.

        Raises:
            ConfigError: another mixing mode, dp size, micro-batch size, seed or number of
                sources than the checkpoint's.
        """
        _check_mode(state, self.mode)
        if state.get("new_data"):  # checkpointing.new_data: this run's data from its beginning
            return
        for key, mine in (("dp_size", self.dp_size), ("micro_batch_size", self.mbs), ("seed", self.seed)):
            if key in state and state[key] != mine:
                raise ConfigError(f"cannot resume exactly: checkpoint has {key}={state[key]}, this run has {mine}")
        sources = state.get("sources")
        if not isinstance(sources, list) or len(sources) != len(self.weights):
            raise ConfigError("cannot resume exactly: the checkpoint's token-mixing state does not match "
                              f"the {len(self.weights)} data sources of this run")
        self.tally.load(sources)
        self.cursor = [int(s["cursor"]) for s in sources]
        self.position = int(state["position"])


def _check_mode(state: dict, mode: str) -> None:
    saved = state.get("mixing", "rows")
    if state and not state.get("new_data") and saved != mode:
        raise ConfigError(f"cannot resume exactly: checkpoint was trained with data.mixing={saved}, "
                          f"this run has {mode} (use checkpointing.new_data to restart the data order)")


def make_sampler(data: MixedDataset, datasets: Sequence[Any], paths: Sequence[Any], repeats: Sequence[bool],
                 data_config: Any, micro_batch_size: int, dp_size: int, dp_rank: int, seed: int,
                 log: Callable[[str], None] = print) -> Any:
    """The sampler ``data_config.mixing`` names (``mixing``, ``repeat``, ``buckets``,
    ``shuffle`` read from it; ``repeats`` per source from ``PATH:WEIGHT:norepeat``).

    Raises:
        ConfigError: unknown mode; a weight that is not > 0 and finite;
            repeat false with ``rows`` mixing.
        DataError: ``tokens`` mixing over a source without label tokens.
    """

    mode = getattr(data_config, "mixing", "rows")
    if mode not in MIXING_MODES:
        raise ConfigError(f"data.mixing must be one of {', '.join(MIXING_MODES)}, got {mode!r}")
    bad = [(str(p), w) for p, w in zip(paths, data.weights) if not (w > 0 and math.isfinite(w))]
    if bad:
        raise ConfigError(f"data weights must be > 0 and finite, got {bad[0][1]} for {bad[0][0]}")
    repeat = [bool(getattr(data_config, "repeat", True)) and r for r in repeats]
    tally = _Tally(source_names(paths), data.weights, [row_token_counts(d) for d in datasets])
    shuffle = bool(getattr(data_config, "shuffle", True))
    if mode == "tokens":
        return TokenMixSampler(data, micro_batch_size, dp_size, dp_rank, seed, shuffle, tally, repeat, log)
    if mode == "rows":
        if not all(repeat):
            raise ConfigError("data.repeat false / PATH:WEIGHT:norepeat needs data.mixing tokens or bucketed "
                              "(rows mode up-samples by cycling within an epoch)")
        return RowsSampler(data, micro_batch_size, dp_size, dp_rank, seed, shuffle, tally)
    return BucketedSampler(data, micro_batch_size, dp_size, dp_rank, seed, shuffle, tally, repeat=all(repeat),
                           buckets=int(getattr(data_config, "buckets", 10)))


def mixing_fields(sampler: Any, stopped: str | None) -> dict[str, Any]:
    """The summary's mixing keys: ``stopped`` (the reason a used-up source or a budget
    ended the run, or None) and, for the mixing samplers, ``data_mixing: {mode, sources:
    {NAME: {tokens, rows, share, target, epochs}}}``."""
    fields: dict[str, Any] = {"stopped": stopped}
    if hasattr(sampler, "report"):
        fields["data_mixing"] = {"mode": sampler.mode, "sources": sampler.report()}
    return fields


def format_shares(report: dict[str, dict[str, Any]]) -> list[str]:
    """One line per source for ``cpt train``'s end: ``NAME: share 0.301 (target 0.300),
    TOKENS tokens, ROWS rows, epoch E``."""
    return [f"{name}: share {r['share']:.3f} (target {r['target']:.3f}), {r['tokens']:,} tokens, "
            f"{r['rows']:,} rows, epoch {r['epochs']}" for name, r in report.items()]
