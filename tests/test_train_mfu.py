"""MFU (cptcore.train.mfu): PaLM's 6N + 12LHQT against a hand count for SmolLM2-135M,
the per-document attention term, the peak table and the CPU probe."""

from __future__ import annotations

import pytest

from cptcore.errors import ConfigError
from cptcore.train.mfu import (FlopsModel, Meter, attended_positions, count_n, flops_model, measure_cpu_peak,
                               resolve_peak, table_peak)

# SmolLM2-135M's config.json: 30 layers, hidden 576, 9 heads (3 KV), head 64, MLP 1536, vocab 49152, tied
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)


def test_smollm2_135m_flops_by_hand():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SMOLLM2)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # per layer: q,o 576*576; k,v 576*192; MLP 3*576*1536; 2 RMSNorms of 576
    layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
    assert layer == 3_540_096
    non_embedding = 30 * layer + 576  # + the final norm
    embedding = 49152 * 576
    # tied: the embedding table is the output head, counted once (its lookup costs nothing, its matmul does)
    assert count_n(model) == non_embedding + embedding == 134_515_008
    f = flops_model(config, count_n(model))
    assert (f.n_layers, f.n_heads, f.head_dim) == (30, 9, 64)
    # 6N + 12*L*H*Q*T at T = 2048: 807,090,048 + 424,673,280
    assert f.per_token(2048) == 6 * 134_515_008 + 12 * 30 * 9 * 64 * 2048 == 1_231_763_328
    # an untied head: the input table drops out, the head stays
    untied = LlamaConfig(**{**SMOLLM2, "tie_word_embeddings": False})
    with torch.device("meta"):
        assert count_n(LlamaForCausalLM(untied)) == non_embedding + embedding


def test_attended_positions_per_document_and_pads():
    # row 0: documents of 3 and 2 tokens, then 2 pads (one-token documents past `lengths`, ignored)
    # row 1: one document of 4 tokens, no pad
    pos = [[0, 1, 2, 0, 1, 0, 0], [0, 1, 2, 3, 0, 0, 0]]
    assert attended_positions(pos, [5, 4]) == 3 * 3 + 2 * 2 + 4 * 4
    assert attended_positions([[0, 1, 2, 3]]) == 16
    # a row starting mid-document (a split document) is a document from position 0 of the row
    assert attended_positions([[5, 6, 0, 1]]) == 4 + 4


def test_meter_mfu_and_hfu_with_recompute():
    f = FlopsModel(n_params=1000, n_layers=2, n_heads=4, head_dim=8)
    m = Meter(f, peak=1e6, devices=2, recompute=True)
    model = 6 * 1000 * 100 + 12 * 2 * 4 * 8 * 500
    assert m.mfu(100, 500, 0.5) == pytest.approx(model / (0.5 * 2 * 1e6))
    hardware = 8 * 1000 * 100 + 16 * 2 * 4 * 8 * 500
    assert m.hfu(100, 500, 0.5) == pytest.approx(hardware / (0.5 * 2 * 1e6))
    assert Meter(f, 1e6, 1).hfu(100, 500, 1.0) == Meter(f, 1e6, 1).mfu(100, 500, 1.0)
    assert m.mfu(100, 500, 0.0) == 0.0


def test_peak_table_and_resolution():
    assert table_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert table_peak("NVIDIA H100 PCIe", "bf16") == 756e12
    assert table_peak("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert table_peak("NVIDIA A100-SXM4-80GB", "fp32", tf32=True) == 156e12
    assert table_peak("NVIDIA A10", "bf16") == 125e12 and table_peak("NVIDIA A100 80GB PCIe", "bf16") == 312e12
    assert table_peak("NVIDIA A10G", "bf16") is None  # not an A10
    assert table_peak("Tesla V100-SXM2-32GB", "bf16") is None  # no bf16 tensor cores
    assert table_peak("NVIDIA H200", "bf16") == 989e12 and table_peak("NVIDIA L40S", "fp16") == 362e12
    assert resolve_peak(3e14, "cuda", "Unknown GPU", "bf16") == (3e14, "stated (training.peak_flops)")
    peak, why = resolve_peak(None, "cuda", "Unknown GPU", "bf16")
    assert peak is None and "training.peak_flops" in why
    cpu, why = resolve_peak(None, "cpu", "cpu", "fp32")
    assert cpu == measure_cpu_peak("fp32") > 1e8 and "measured" in why  # cached: the same figure again


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), "fast", True])
def test_peak_flops_config_is_checked(bad):
    from cptcore.train.plan import check_peak_flops

    with pytest.raises(ConfigError, match="training.peak_flops must be a positive FLOP/s figure"):
        check_peak_flops(bad)
    check_peak_flops(None)
    check_peak_flops(9.89e14)


@pytest.mark.parametrize("tied", [True, False])
def test_n_under_lora_train_embeddings_counts_each_matmul_once(tied):
    """peft's ``modules_to_save`` (``lora.train_embeddings``) keeps a frozen
    ``original_module`` beside each trainable copy; only the copies run in the forward, so
    N = the base model's N + the adapters (the untied head was counted 2x, the embedding
    table once, before)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from cptcore.builtin_plugins.lora import add_lora
    from cptcore.config import load_config

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg)
    base = count_n(model)
    assert base == sum(p.numel() for p in model.parameters()) - (0 if tied else 1000 * 32)
    lora = load_config(None, sets=["lora.enabled=true", "lora.train_embeddings=true", "lora.r=2"]).lora
    peft_model = add_lora(model, lora)
    adapters = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert adapters == 2 * 4 * 2 * (32 + 32) - 2 * 2 * 2 * (32 - 16)  # q,o: 2x(32+32); k,v: 2x(32+16); r=2, 2 layers
    assert count_n(peft_model) == base + adapters
