"""Attention implementation selection (issue 12 item 5): FlashAttention-2 takes fp16/bf16
only, so an fp32 run picks SDPA under ``auto`` and refuses a forced FA2 naming the fix;
forcing FA2 without CUDA is refused before ``OUT/config.yaml`` is written. The detection
functions are monkeypatched (no GPU, no flash-attn here)."""

from __future__ import annotations

import pytest

from cptcore.errors import ConfigError
from cptcore.model import load
from train_support import DATA, prepare, tiny_model


def _machine(monkeypatch, *, fa: bool, cuda: bool) -> None:
    monkeypatch.setattr(load, "flash_attn_installed", lambda: fa)
    monkeypatch.setattr(load, "cuda_available", lambda: cuda)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_auto_picks_flash_for_half_precision_on_a_gpu_with_flash_attn(monkeypatch, dtype):
    _machine(monkeypatch, fa=True, cuda=True)
    assert load.choose_attention("auto", dtype)[0] == "flash_attention_2"
    assert load.choose_attention("flash_attention_2", dtype) == ("flash_attention_2", "as configured")


def test_auto_picks_sdpa_for_fp32_even_with_flash_attn_and_cuda(monkeypatch):
    _machine(monkeypatch, fa=True, cuda=True)
    impl, why = load.choose_attention("auto", "fp32")
    assert impl == "sdpa" and "fp16/bf16 only" in why and "fp32" in why


def test_forced_flash_with_fp32_is_refused_naming_the_fix(monkeypatch):
    _machine(monkeypatch, fa=True, cuda=True)
    with pytest.raises(ConfigError, match=r"takes fp16/bf16 only, and this run computes in fp32: set strategy.precision=bf16"):
        load.choose_attention("flash_attention_2", "fp32")


@pytest.mark.parametrize("fa, cuda, reason, message", [
    (False, True, "flash-attn is not installed", "needs the flash-attn package"),
    (True, False, "CUDA is not available", "needs CUDA, and this machine has none"),
])
def test_missing_flash_or_cuda(monkeypatch, fa, cuda, reason, message):
    _machine(monkeypatch, fa=fa, cuda=cuda)
    impl, why = load.choose_attention("auto", "bf16")
    assert impl == "sdpa" and why.startswith(reason)
    with pytest.raises(ConfigError, match=message):
        load.choose_attention("flash_attention_2", "bf16")
    assert load.choose_attention("eager", "fp32") == ("eager", "as configured")
    with pytest.raises(ConfigError, match="unknown 'fast'"):
        load.choose_attention("fast", "bf16")


@pytest.mark.parametrize("model_dtype, precision, expected", [
    ("fp32", "fp32", "fp32"), ("fp32", "bf16", "bf16"), ("fp32", "fp16", "fp16"), ("bf16", "fp32", "bf16"),
    ("fp32", None, "fp32"),
])
def test_compute_dtype(model_dtype, precision, expected):
    assert load.compute_dtype(model_dtype, precision) == expected


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir):
    root = tmp_path_factory.mktemp("attn")
    small = root / "small.jsonl"
    small.write_text((DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    return {"model": tiny_model(root / "model", smollm2_tokenizer_dir),
            "data": prepare(root / "data", smollm2_tokenizer_dir, [str(small)], max_length=64)}


@pytest.mark.parametrize("fa, cuda, sets, message", [
    (False, False, ["model.attn_implementation=flash_attention_2"], "needs the flash-attn package"),
    (True, False, ["model.attn_implementation=flash_attention_2"], "needs CUDA, and this machine has none"),
    (True, True, ["model.attn_implementation=flash_attention_2", "strategy.precision=fp32"], "set strategy.precision=bf16"),
])
def test_cpt_train_refuses_before_writing_the_run_config(cpt_cli, env, tmp_path, monkeypatch, fa, cuda, sets, message):
    _machine(monkeypatch, fa=fa, cuda=cuda)
    out = tmp_path / "out"
    args = ["train", "--model", str(env["model"]), "--data", str(env["data"]), "--out", str(out), "--max-steps", "1",
            "--set", "logging.progress=false"]
    for item in sets:
        args += ["--set", item]
    code, output = cpt_cli(*args)
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and message in errors[0], output
    assert not (out / "config.yaml").exists() and not out.exists()
