"""The patch record and the two gap probes every compat module uses."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Patch:
    """One upstream gap: where it is, how to detect it, how to fill it."""

    name: str
    upstream: str  # file:line in colossalai 0.5.0
    has_gap: Callable[[], bool]
    fill: Callable[[], None]


def raises(fn: Callable[[], Any], exc: type[BaseException] = RuntimeError) -> bool:
    """True when ``fn()`` raises ``exc`` (the gap); False when it works or fails otherwise."""
    try:
        fn()
    except exc:
        return True
    except Exception:  # a different failure: not the gap we know how to fill
        return False
    return False


def source_has(obj: Any, text: str) -> bool:
    """True when ``obj``'s source contains ``text`` (the upstream code still has the gap)."""
    try:
        return text in inspect.getsource(obj)
    except (OSError, TypeError):
        return False
