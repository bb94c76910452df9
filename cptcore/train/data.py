"""Training data: prepared Arrow folders, mixing weights, a resumable distributed sampler,
collation with block-diagonal attention for packed rows.

A prepared folder is what ``cpt prepare`` writes: a ``datasets`` Arrow folder that
``datasets.load_from_disk`` opens memory-mapped (rows are read on demand, nothing is
loaded into RAM) plus ``manifest.json``. Rows hold ``input_ids``, ``labels`` (-100
where masked) and ``position_ids`` (restarting at 0 at every document boundary; a
trailing pad span has its own positions from 0, pad id with label -100).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..contract import IGNORE_INDEX, REQUIRED_COLUMNS, Manifest
from ..data.manifest import read_manifest as _read_manifest_file, tokenizer_vocab_hash
from ..errors import ConfigError, DataError

__all__ = ["IGNORE_INDEX", "REQUIRED_COLUMNS", "Manifest"]  # re-exported: the contract lives in cptcore.contract


@dataclass(frozen=True)
class Source:
    """One prepared folder, its mixing weight (relative; weights need not sum to 1) and
    whether it may be re-epoched when used up (``mixing: tokens``/``bucketed``)."""

    path: Path
    weight: float = 1.0
    repeat: bool = True


NOREPEAT = ":norepeat"


def split_source(spec: str) -> tuple[str, float, bool]:
    """``"PATH[:WEIGHT][:norepeat]"`` -> ``(PATH as written, weight, repeat)``. A path that
    exists as written is literal (a folder named ``run:1``); otherwise a suffix that is
    not a number is part of the path, unless the path before it exists (then it is a
    mistyped weight).

    Raises:
        ConfigError: weight not a positive finite number; ``PATH:abc`` with PATH existing.
    """
    path, weight, repeat = spec, 1.0, True
    if path.endswith(NOREPEAT) and not os.path.exists(path):
        path, repeat = path[:-len(NOREPEAT)], False
    if ":" in path and not os.path.exists(path):
        head, tail = path.rsplit(":", 1)
        try:
            weight = float(tail)
            path = head
        except ValueError:
            if head and os.path.exists(head):
                raise ConfigError(f"--data {spec}: the weight {tail!r} is not a number "
                                  "(PATH[:WEIGHT][:norepeat])") from None
    if not (weight > 0 and math.isfinite(weight)):
        raise ConfigError(f"data weight must be > 0 and finite in '{spec}'")
    return path, weight, repeat


def parse_source(spec: str) -> Source:
    """``"PATH[:WEIGHT][:norepeat]"`` -> :class:`Source` (see :func:`split_source`).

    Raises:
        ConfigError: weight not a positive finite number; ``PATH:abc`` with PATH existing.
    """
    path, weight, repeat = split_source(spec)
    return Source(Path(path), weight, repeat)


def read_manifest_any(folder: Path) -> dict:
    """The folder's manifest as a dict, through the data package's reader.

    Raises:
        DataError: missing folder, missing or unreadable manifest.
    """
    if not folder.exists():
        raise DataError("prepared data folder not found", path=str(folder))
    return dict(_read_manifest_file(folder))


def read_manifest(folder: Path) -> Manifest:
    """The folder's manifest, typed (:class:`cptcore.contract.Manifest`).

    Raises:
        DataError: missing folder, missing or unreadable manifest.
    """
    return Manifest.from_dict(read_manifest_any(folder), folder)


def check_sources(sources: Sequence[Source], tokenizer: Any, columns: Sequence[str] = REQUIRED_COLUMNS) -> list[Manifest]:
    """Check every folder exists, has a manifest, matches ``tokenizer``'s vocabulary
    hash and declares ``columns`` (what the objective reads). Cheap (no Arrow opened).
    Returns the manifests.

    Raises:
        DataError: folder or manifest missing; "tokenizer mismatch" naming the folder and
            both hashes; 0 rows; a column the objective needs is missing.
    """
    want = tokenizer_vocab_hash(tokenizer)
    manifests = []
    for src in sources:
        manifest = read_manifest(src.path)
        have = manifest.vocab_hash
        if have is not None and have != want:
            made_with = (f"tokenizer {manifest.tokenizer_name} ({manifest.vocab_size} tokens), "
                         if manifest.tokenizer_name else "")
            raise DataError(
                f"tokenizer mismatch: data was prepared with {made_with}vocab hash {have}; the model's tokenizer "
                f"({len(tokenizer)} tokens) has {want}: prepare the data again with the model's tokenizer",
                path=str(src.path),
            )
        if manifest.rows == 0:  # found here, before the model is loaded
            raise DataError("empty dataset (0 rows)", path=str(src.path))
        missing = [c for c in columns if c not in (*REQUIRED_COLUMNS, *manifest.columns)]
        if missing:
            raise DataError(f"the objective needs columns {missing}, the folder has {list(manifest.columns)}",
                            path=str(src.path))
        manifests.append(manifest)
    return manifests


def open_dataset(folder: Path, columns: Sequence[str] = REQUIRED_COLUMNS) -> Any:
    """``datasets.load_from_disk`` (memory-mapped) with the row schema checked.

    Raises:
        DataError: not an Arrow folder, missing columns, or no rows.
    """
    import datasets

    try:
        ds = datasets.load_from_disk(str(folder))
    except IndexError as exc:  # datasets cannot concatenate zero Arrow tables
        raise DataError("empty dataset (0 rows)", path=str(folder)) from exc
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"not a prepared Arrow folder ({exc})", path=str(folder)) from exc
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError("DatasetDict without a 'train' split", path=str(folder))
        ds = ds["train"]
    wanted = list(dict.fromkeys([*REQUIRED_COLUMNS, *columns]))
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise DataError(f"missing columns {missing} (has {ds.column_names})", path=str(folder))
    if len(ds) == 0:
        raise DataError("empty dataset (0 rows)", path=str(folder))
    return ds.with_format("numpy", columns=wanted)


class MixedDataset:
    """Several datasets addressed by a global index ``(source, row)`` pair list."""

    def __init__(self, datasets: Sequence[Any], weights: Sequence[float]):
        self.datasets = list(datasets)
        self.weights = [float(w) for w in weights]
        self.lengths = [len(d) for d in self.datasets]

    def get(self, source: int, row: int) -> dict:
        return self.datasets[source][int(row)]


class MixedSampler:
    """Deterministic, resumable, distributed order of rows for one epoch after another.

    Epoch ``e``'s plan: ``total = sum(len_i)`` rows; source ``i`` contributes
    ``round(total * w_i / sum(w))`` rows (cycling through fresh permutations of its rows
    when that exceeds its length, so weights up-/down-sample), all shuffled together with
    ``numpy.random.default_rng([seed, e])`` (or in order when ``shuffle`` is False). The
    plan is cut to a multiple of ``dp_size * micro_batch_size``; global micro-batch ``k``
    is plan rows ``[k*dp*mbs, (k+1)*dp*mbs)`` and rank ``r`` takes its ``r``-th slice of
    ``mbs`` rows, so every rank steps through the same number of micro-batches.

    State: ``{"epoch": e, "position": k}`` - micro-batches of epoch ``e`` already
    consumed. After a resume only the rest of that epoch is skipped; later epochs start
    at 0.
    """

    def __init__(self, data: MixedDataset, micro_batch_size: int, dp_size: int, dp_rank: int,
                 seed: int, shuffle: bool = True):
        self.data = data
        self.mbs = micro_batch_size
        self.dp_size = dp_size
        self.dp_rank = dp_rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._plan_epoch: int | None = None
        self._plan: Any = None

    def plan(self, epoch: int) -> Any:
        """``[n, 2]`` int64 array of ``(source, row)`` for ``epoch`` (all ranks)."""
        import numpy as np

        if self._plan_epoch == epoch:
            return self._plan
        rng = np.random.default_rng([self.seed, epoch])
        total = sum(self.data.lengths)
        wsum = sum(self.data.weights)
        parts = []
        for i, (n, w) in enumerate(zip(self.data.lengths, self.data.weights)):
            want = int(round(total * w / wsum))
            rows = []
            while sum(len(r) for r in rows) < want:
                rows.append(rng.permutation(n) if self.shuffle else np.arange(n))
            picked = np.concatenate(rows)[:want] if rows else np.zeros(0, dtype=np.int64)
            parts.append(np.stack([np.full(len(picked), i), picked], axis=1))
        plan = np.concatenate(parts).astype(np.int64)
        if self.shuffle:
            plan = plan[rng.permutation(len(plan))]
        self._plan_epoch, self._plan = epoch, plan
        return plan

    def batches_per_epoch(self) -> int:
        """Micro-batches per rank per epoch."""
        return len(self.plan(self.epoch)) // (self.dp_size * self.mbs)

    def next_batch(self) -> tuple[list[tuple[int, int]], bool]:
        """The next micro-batch of ``(source, row)`` pairs for this rank, and whether it
        was the last of its epoch (the sampler then moves to the next epoch)."""
        per = self.batches_per_epoch()
        plan = self.plan(self.epoch)
        start = (self.position * self.dp_size + self.dp_rank) * self.mbs
        picked = [tuple(int(x) for x in pair) for pair in plan[start:start + self.mbs]]
        self.position += 1
        last = self.position >= per
        if last:
            self.epoch += 1
            self.position = 0
        return picked, last

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "dp_size": self.dp_size, "micro_batch_size": self.mbs}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position.

        Raises:
            ConfigError: the checkpoint was made with another data-parallel size, micro-batch
                size or seed (the order would differ).
        """
        for key, mine in (("dp_size", self.dp_size), ("micro_batch_size", self.mbs), ("seed", self.seed)):
            if key in state and state[key] != mine:
                raise ConfigError(f"cannot resume exactly: checkpoint has {key}={state[key]}, this run has {mine}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def real_length(input_ids: Any, labels: Any, position_ids: Any, pad_id: int | None) -> int:
    """Tokens of a row that are not padding: the row length minus a trailing pad span
    (the last document, if every one of its tokens is ``pad_id`` with label -100 and it is
    not the whole row)."""
    import numpy as np

    n = len(input_ids)
    if pad_id is None or n == 0:
        return n
    starts = np.flatnonzero(position_ids == 0)
    last = int(starts[-1]) if len(starts) else 0
    if last > 0 and np.all(input_ids[last:] == pad_id) and np.all(labels[last:] == IGNORE_INDEX):
        return last
    return n


def collate(rows: Sequence[dict], pad_id: int | None, block_mask: bool, mask_dtype: Any = None) -> dict:
    """Stack rows into a batch, right-padding shorter rows.

    Args:
        rows: dicts of int arrays ``input_ids``/``labels``/``position_ids`` ``[len_i]``.
        pad_id: id used for padding (0 when ``None``); padded labels are -100 and padded
            positions are 0 (each pad token is its own one-token "document").
        block_mask: also return ``attention_mask`` ``[B, 1, S, S]`` (``mask_dtype``,
            0 where allowed, dtype-min elsewhere): causal *within* a document, where
            documents are the spans starting at each ``position_ids == 0``. This is what
            keeps packed documents from attending to each other on SDPA/eager; flash
            attention instead derives variable-length boundaries from ``position_ids``.

    Returns:
        ``input_ids``, ``labels``, ``position_ids`` int64 ``[B, S]``, ``lengths`` int64
        ``[B]`` (real, non-pad tokens per row, see :func:`real_length`), optional
        ``attention_mask``.
    """
    import numpy as np
    import torch

    S = max(len(r["input_ids"]) for r in rows)
    B = len(rows)
    pad = 0 if pad_id is None else pad_id
    ids = np.full((B, S), pad, dtype=np.int64)
    lab = np.full((B, S), IGNORE_INDEX, dtype=np.int64)
    pos = np.zeros((B, S), dtype=np.int64)
    lengths = np.zeros(B, dtype=np.int64)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = r["input_ids"]
        lab[i, :n] = r["labels"]
        pos[i, :n] = r["position_ids"]
        lengths[i] = real_length(np.asarray(r["input_ids"]), np.asarray(r["labels"]),
                                 np.asarray(r["position_ids"]), pad_id)
    batch = {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(lab),
        "position_ids": torch.from_numpy(pos),
        "lengths": torch.from_numpy(lengths),
    }
    if block_mask:
        batch["attention_mask"] = block_causal_mask(batch["position_ids"], mask_dtype or torch.float32)
    return batch


def block_causal_mask(position_ids: Any, dtype: Any) -> Any:
    """``[B, 1, S, S]`` additive mask from ``position_ids`` ``[B, S]``: 0 where query
    ``i`` may attend key ``j`` (same document and ``j <= i``), ``torch.finfo(dtype).min``
    elsewhere. Documents start wherever ``position_ids == 0``."""
    import torch

    doc = torch.cumsum((position_ids == 0).long(), dim=1)  # [B, S]
    same = doc[:, :, None] == doc[:, None, :]
    S = position_ids.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    allowed = same & causal[None]
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class Loader:
    """Iterates micro-batches for this rank from a :class:`MixedSampler` (no worker
    processes and no use of the global RNG, so resuming replays RNG exactly)."""

    def __init__(self, data: MixedDataset, sampler: MixedSampler, pad_id: int | None, block_mask: bool, mask_dtype: Any = None,
                 collate_fn: Callable[..., dict] | None = None):
        self.data = data
        self.sampler = sampler
        self.pad_id = pad_id
        self.block_mask = block_mask
        self.mask_dtype = mask_dtype
        self.collate_fn = collate_fn or collate

    def next(self) -> tuple[dict, bool]:
        """``(batch, epoch_ended)``."""
        pairs, last = self.sampler.next_batch()
        rows = [self.data.get(s, r) for s, r in pairs]
        return self.collate_fn(rows, self.pad_id, self.block_mask, self.mask_dtype), last


def rank_batches(n: int, micro_batch_size: int, dp_size: int, dp_rank: int, limit: int | None) -> Iterator[range]:
    """Row index ranges of this rank's micro-batches over ``n`` held-out rows: global
    batch ``k`` covers rows ``[k*mbs*dp, (k+1)*mbs*dp)`` and rank ``r`` its ``r``-th slice;
    every row once over all ranks (the last batches may be short or empty); ``limit``
    caps batches per rank."""
    count = 0
    step = micro_batch_size * dp_size
    for start in range(0, n, step):
        lo = start + dp_rank * micro_batch_size
        hi = min(lo + micro_batch_size, n)
        if lo >= hi:
            continue
        if limit is not None and count >= limit:
            return
        count += 1
        yield range(lo, hi)


def eval_batches(folders: Sequence[Path], micro_batch_size: int, dp_size: int, dp_rank: int,
                 pad_id: int | None, block_mask: bool, limit: int | None = None,
                 mask_dtype: Any = None, collate_fn: Callable[..., dict] | None = None,
                 columns: Sequence[str] = REQUIRED_COLUMNS) -> Iterator[dict]:
    """Held-out micro-batches for this rank, in order, covering every row once
    (:func:`rank_batches`; a rank with no rows left yields nothing). ``limit`` caps the
    micro-batches per rank over all folders."""
    collate_fn = collate_fn or collate
    count = 0
    for folder in folders:
        ds = open_dataset(folder, columns)
        for idx in rank_batches(len(ds), micro_batch_size, dp_size, dp_rank, None if limit is None else limit - count):
            count += 1
            yield collate_fn([ds[i] for i in idx], pad_id, block_mask, mask_dtype)


def seq_length(manifests: Sequence[Manifest | dict]) -> int | None:
    """The largest ``max_length`` named by the manifests (None when none say)."""
    lengths = [m.max_length if isinstance(m, Manifest) else m.get("max_length") for m in manifests]
    lengths = [n for n in lengths if isinstance(n, int)]
    return max(lengths) if lengths else None


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
