"""Interleaving inputs so that their *token* proportions follow the mixing weights.

Without weights, inputs are read one after the other, in the order given. With weights
``w_i`` (normalised to sum 1), the next document always comes from the input with the
smallest ``tokens_i / w_i`` (ties: the earlier input), which keeps every prefix of the
output within one document of the target proportions. When an input runs out:

* ``downsample`` (default): stop; the other inputs are not read further (their unread
  documents are neither read nor skipped; the manifest says which inputs were exhausted);
* ``upsample``: restart it (another epoch over that input) until every input has been
  read to the end at least once.

An input whose whole pass yields no tokens is dropped from the mix instead.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence


class Mixer:
    """Iterate ``(input_index, item)`` over per-input streams made by ``factories``;
    ``size(item)`` is the number of tokens an item contributes."""

    def __init__(
        self,
        factories: Sequence[Callable[[], Iterator]],
        weights: Sequence[float] | None,
        size: Callable[[object], int],
        policy: str = "downsample",
    ):
        if policy not in ("downsample", "upsample"):
            raise ValueError(f"mix policy must be downsample or upsample, got {policy!r}")
        self.factories = list(factories)
        self.weights = None if weights is None else [w / sum(weights) for w in weights]
        self.size = size
        self.policy = policy
        n = len(self.factories)
        self.tokens = [0] * n
        self.epochs = [0] * n
        self.exhausted = [False] * n

    def __iter__(self) -> Iterator[tuple[int, object]]:
        if self.weights is None:
            for i, make in enumerate(self.factories):
                self.epochs[i] = 1
                for item in make():
                    self.tokens[i] += self.size(item)
                    yield i, item
                self.exhausted[i] = True
            return
        n = len(self.factories)
        its = [make() for make in self.factories]
        self.epochs = [1] * n
        active = set(range(n))
        pass_tokens = [0] * n
        while active:
            i = min(active, key=lambda k: (self.tokens[k] / self.weights[k], k))
            item = next(its[i], None)
            if item is not None:
                t = self.size(item)
                self.tokens[i] += t
                pass_tokens[i] += t
                yield i, item
                continue
            first_pass_empty = pass_tokens[i] == 0
            self.exhausted[i] = True
            if first_pass_empty:
                active.discard(i)
                continue
            if self.policy == "downsample" or all(self.exhausted[k] for k in active):
                return
            its[i] = self.factories[i]()
            self.epochs[i] += 1
            pass_tokens[i] = 0
