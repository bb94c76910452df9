"""``cpt train --dry-run``: layout, parameter counts (meta device, no weights), memory
table, and one-line refusals, through the CLI in-process."""

from __future__ import annotations

import re
import shutil

import pytest

from cptcore.train.estimate import ModelShape, Plan, estimate


@pytest.fixture(scope="module")
def config_only_model(tmp_path_factory):
    """A tiny LLaMA folder with config.json only: the dry run must not need weights."""
    from cptcore.testing import make_tiny_llama

    full = make_tiny_llama(tmp_path_factory.mktemp("full") / "m", vocab_size=128)
    bare = tmp_path_factory.mktemp("bare") / "m"
    bare.mkdir()
    shutil.copy(full / "config.json", bare / "config.json")
    return bare


# tiny LLaMA: vocab 128, hidden 64, 2 layers, 4 heads (head dim 16), 2 KV heads, MLP 128, tied
EMBED = 128 * 64
LAYER = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64  # q,o + k,v + gate/up/down + 2 norms
TOTAL = EMBED + 2 * LAYER + 64  # + final norm


def test_dry_run_layout_counts_and_table(cpt_cli, config_only_model):
    code, out = cpt_cli("train", "--dry-run", "--model", str(config_only_model), "--strategy", "3d",
                        "--set", "strategy.tp_size=2", "--set", "strategy.precision=bf16", "--nproc-per-node", "4",
                        "--micro-batch-size", "2")
    assert code == 0, out
    assert "strategy: hybrid3d (precision bf16)" in out
    assert "layout:   world=4: dp=2 tp=2 pp=1 sp=1" in out
    assert f"params:   {TOTAL:,} total, {TOTAL:,} trainable, 0 frozen" in out
    assert "micro-batch 2 x 2048 tokens (assumed); attention sdpa; gradient checkpointing off" in out
    est = estimate(ModelShape(TOTAL, TOTAL, 64, 2, 4, 128, intermediate_size=128),
                   Plan("hybrid3d", precision="bf16", dp=2, tp=2, micro_batch_size=2, seq_len=2048,
                        loss_chunk_tokens=1024))  # causal_lm's default chunk_tokens
    assert re.search(rf"optimizer states\s+\|\s+{est.optimizer:,.0f} \|", out)
    assert re.search(rf"activations \(checkpointing\)\s+\|\s+{est.activations_ckpt:,.0f} \|", out)
    assert re.search(rf"\| total\s+\|\s+{est.device:,.0f} \|", out)
    assert "nothing trained" in out


def test_dry_run_freeze_and_lora_counts(cpt_cli, config_only_model):
    code, out = cpt_cli("train", "--dry-run", "--model", str(config_only_model), "--strategy", "zero2",
                        "--freeze", "non-embeddings", "--set", "strategy.precision=bf16")
    assert code == 0, out
    assert f"{TOTAL:,} total, {EMBED:,} trainable, {TOTAL - EMBED:,} frozen" in out
    assert "layout:   world=1: dp=1 tp=1 pp=1 sp=1" in out
    code, out = cpt_cli("train", "--dry-run", "--model", str(config_only_model), "--strategy", "zero1",
                        "--set", "lora.enabled=true")
    assert code == 0, out
    lora = 2 * (8 * (64 + 64) * 2 + 8 * (64 + 32) * 2)  # r=8 on q,o (64->64) and k,v (64->32), 2 layers
    assert f"{TOTAL + lora:,} total, {lora:,} trainable, {TOTAL:,} frozen" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "hybrid3d", "--set", "strategy.tp_size=2", "--set", "strategy.pp_size=2", "--nproc-per-node", "6"],
         "error: hybrid3d: tp(2)·pp(2) = 4 does not divide world size 6"),
        (["--strategy", "hybrid3d", "--set", "strategy.tp_size=8", "--nproc-per-node", "8"],
         "error: hybrid3d: 4 attention heads are not divisible by tp(8)"),
        (["--strategy", "hybrid3d", "--set", "strategy.pp_size=2", "--set", "lora.enabled=true", "--nproc-per-node", "2",
          "--micro-batch-size", "2"], "error: hybrid3d: LoRA is not supported"),
        (["--strategy", "gemini", "--nproc-per-node", "2"], "error: gemini: precision fp32 is not supported"),
        (["--strategy", "zero9"], "error: unknown strategy 'zero9'"),
    ],
)
def test_dry_run_refusals_one_line(cpt_cli, config_only_model, args, message):
    code, out = cpt_cli("train", "--dry-run", "--model", str(config_only_model), *args)
    assert code == 1
    assert message in out
    assert len([line for line in out.splitlines() if line.startswith("error:")]) == 1


def test_dry_run_reads_gguf_metadata_only(cpt_cli, smollm2_gguf):
    """SmolLM2-135M from its GGUF: the config comes from the metadata, no tensors loaded."""
    code, out = cpt_cli("train", "--dry-run", "--model", str(smollm2_gguf), "--strategy", "zero2",
                        "--set", "strategy.precision=bf16", "--set", "model.gradient_checkpointing=true")
    assert code == 0, out
    assert "params:   134,515,008 total, 134,515,008 trainable, 0 frozen" in out  # tied embeddings once
    assert "gradient checkpointing on" in out
