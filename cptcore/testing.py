"""Test support for cptcore and for plugin authors.

Use it from a ``conftest.py``::

    pytest_plugins = ["cptcore.testing"]

Fixtures:
    ``cpt_pm``: a fresh plugin manager with the built-ins only (no entry points).
    ``cpt_cli``: ``cpt_cli(*args, pm=None) -> (exit_code, output)`` runs the CLI built by
        ``make_app`` in-process.
    ``fake_entry_points``: ``fake_entry_points({"name": obj_or_exception})`` makes the
        ``cptcore`` entry-point group contain exactly those plugins; an exception value
        makes that entry point raise on load.

Helpers:
    :func:`make_tiny_llama` saves a random-init LLaMA with a given tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import pytest

from .plugins import CptPluginManager, make_plugin_manager
from .cli import make_app


class _FakeEntryPoint:
    def __init__(self, name: str, value: Any):
        self.name = name
        self.group = "cptcore"
        self.value = f"fake:{name}"
        self._obj = value
        self.dist = None

    def load(self) -> Any:
        if isinstance(self._obj, BaseException):
            raise self._obj
        return self._obj


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> Callable[[Mapping[str, Any]], None]:
    def install(mapping: Mapping[str, Any]) -> None:
        eps = [_FakeEntryPoint(n, v) for n, v in mapping.items()]

        def entry_points(group: str | None = None, **_: Any):
            return [e for e in eps if group in (None, e.group)]

        monkeypatch.setattr("cptcore.plugins.importlib.metadata.entry_points", entry_points)

    return install


@pytest.fixture
def cpt_pm() -> CptPluginManager:
    return make_plugin_manager(entrypoints=False)


@pytest.fixture
def cpt_cli(cpt_pm: CptPluginManager) -> Callable[..., tuple[int, str]]:
    from typer.testing import CliRunner

    def invoke(*args: str, pm: CptPluginManager | None = None, env: Mapping[str, str] | None = None) -> tuple[int, str]:
        app = make_app(pm or cpt_pm)
        result = CliRunner().invoke(app, list(args), env=dict(env or {}))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output

    return invoke


def make_tiny_llama(
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    *,
    vocab_size: int | None = None,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True,
    seed: int = 0,
) -> Path:
    """Save a random-init ``LlamaForCausalLM`` (fp32 safetensors) to ``out_dir``, with the
    tokenizer from ``tokenizer_dir`` copied beside it (vocab size taken from it).

    Returns:
        ``out_dir`` as a Path.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir)) if tokenizer_dir is not None else None
    if vocab_size is None:
        if tok is None:
            raise ValueError("give tokenizer_dir or vocab_size")
        vocab_size = len(tok)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=getattr(tok, "bos_token_id", None),
        eos_token_id=getattr(tok, "eos_token_id", None),
        pad_token_id=getattr(tok, "pad_token_id", None),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    if tok is not None:
        tok.save_pretrained(out)
    return out
