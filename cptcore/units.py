"""Numbers written with units on the command line and in configs: token counts
(``2M``, ``1.5B``) and file sizes in Hugging Face's syntax (``500MB``, ``2GB``). Torch-free."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

_COUNT_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(value: Any, key: str) -> int:
    """A count written as an integer or with a decimal suffix: ``2M`` = 2,000,000,
    ``1.5B`` (or ``1.5G``) = 1,500,000,000, ``500K``, ``1T``, ``2e6``; case-insensitive,
    underscores and commas ignored (``2_000_000``).

    Raises:
        ConfigError: not such a number, not a whole count (``1.5``), or < 1 (naming ``key``).
    """
    import re
    from decimal import Decimal, InvalidOperation

    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a count such as 2000000, 2M or 1.5B, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().replace("_", "").replace(",", "")
        match = re.fullmatch(r"(\d+(?:\.\d+)?(?:[eE]\+?\d+)?)\s*([kKmMbBgGtT]?)", text)
        if not match:
            raise ConfigError(f"{key}: expected a count such as 2000000, 2M or 1.5B, got {value!r}")
        try:
            exact = Decimal(match.group(1)) * _COUNT_SUFFIX[match.group(2).upper()]
        except InvalidOperation:  # pragma: no cover - the pattern admits decimals only
            raise ConfigError(f"{key}: expected a count such as 2M, got {value!r}") from None
        if exact != exact.to_integral_value():
            raise ConfigError(f"{key}: {value!r} is not a whole number")
        n = int(exact)
    if n < 1:
        raise ConfigError(f"{key} must be >= 1, got {value!r}")
    return n


def parse_shard_size(value: Any, key: str = "--max-shard-size") -> int:
    """Bytes of a safetensors shard, in the syntax ``save_pretrained(max_shard_size=...)``
    takes: an integer (bytes) or a number with ``KB``/``MB``/``GB``/``TB`` (decimal units,
    ``"1.5GB"`` allowed), parsed by the function ``save_pretrained`` itself uses
    (``huggingface_hub``'s ``parse_size_to_int``, via ``split_torch_state_dict_into_shards``),
    so what passes here is what the export writes. The result is passed on as an int.

    Raises:
        ConfigError: not such a size, or < 1 byte (one line naming ``key``).
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size such as 500MB or 2GB, got {value!r}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        n = int(value)
    else:
        from huggingface_hub.serialization._base import parse_size_to_int  # private path; public since 0.23 as used by transformers

        try:
            n = parse_size_to_int(str(value))
        except ValueError:
            raise ConfigError(f"{key}: expected a size such as 500MB or 2GB (units KB, MB, GB, TB), got {value!r}") from None
    if n < 1:
        raise ConfigError(f"{key} must be at least 1 byte, got {value!r}")
    return n
