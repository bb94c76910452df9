"""Shared fixtures. Real inputs come from the repo (tests/data, cptcore/assets) or from
PyPI through :mod:`cptcore.assets`; nothing is read from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["cptcore.testing"]

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def mistral_sp_model() -> Path:
    """Mistral-7B v0.1 SentencePiece model (32000 pieces, byte fallback)."""
    return DATA / "tokenizers" / "mistral-v1.model"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from cptcore.assets import smollm2_gguf as fetch

    return fetch()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct imported from its GGUF into a clean HF folder (cached)."""
    from cptcore.assets import smollm2_hf_dir

    return smollm2_hf_dir()


@pytest.fixture(scope="session")
def mistral_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, mistral_sp_model: Path) -> Path:
    """A Hugging Face folder (slow + fast files) for the Mistral v1 SentencePiece model."""
    from transformers import AutoTokenizer, LlamaTokenizer

    out = tmp_path_factory.mktemp("mistral_tok")
    LlamaTokenizer(vocab_file=str(mistral_sp_model), legacy=True).save_pretrained(out)
    AutoTokenizer.from_pretrained(out).save_pretrained(out)  # adds tokenizer.json
    return out


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir() -> Path:
    """SmolLM2's byte-level BPE tokenizer with upstream behaviour (no BOS, eos
    <|im_end|>), bundled in tests/data (made by ``cpt model import-gguf``)."""
    bundled = DATA / "tokenizers" / "smollm2"
    if (bundled / "tokenizer.json").is_file():
        return bundled
    from cptcore.assets import smollm2_hf_dir

    return smollm2_hf_dir()


@pytest.fixture(scope="session")
def zh_sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3000-piece Chinese SentencePiece model trained on the bundled law sample."""
    from cptcore.assets import bundled
    from cptcore.tokenizer.train import TrainOptions, train_sentencepiece

    model, _ = train_sentencepiece(
        [bundled("zh_law_train.jsonl")], tmp_path_factory.mktemp("zh_sp"), TrainOptions(vocab_size=3000)
    )
    return model


@pytest.fixture(autouse=True)
def _restore_environ():
    """Give every test the environment it started with: an in-process ``cpt train``
    sets RANK/WORLD_SIZE/MASTER_PORT (cptcore.train.launch.init_distributed) and the
    verified-checkpoint cache, which a later ``cpt train --nproc-per-node`` subprocess
    would inherit (its ranks then rendezvous on a stale port)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
