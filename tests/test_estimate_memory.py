"""Memory estimates against hand-computed values (ZeRO paper 2Ψ/2Ψ/KΨ, Korthikanti
et al. 2022 activations)."""

from __future__ import annotations

import pytest

from cptcore.train.estimate import (LOAD_FRACTION, RUNTIME_BYTES, SLACK_FRACTION, ModelShape, Plan, estimate, fmt_bytes,
                                    layer_activation_bytes, llama_layer_activation_bytes, logits_bytes, model_states)

# a 7.5B-parameter GPT-like shape, as in the ZeRO paper's running example (Ψ = 7.5B, N_d = 64)
ZERO_PAPER = ModelShape(params=7_500_000_000, trainable=7_500_000_000, hidden_size=4096,
                        num_hidden_layers=32, num_attention_heads=32, vocab_size=32000)


def test_zero_paper_figure1_numbers():
    # Figure 1 of Rajbhandari et al. 2020: baseline 120 GB, P_os 31.4 GB, P_os+g 16.6 GB
    gb = 1e9
    base = sum(model_states(ZERO_PAPER, Plan("hybrid3d", dp=64))[:3]) / gb  # DP, no ZeRO, mixed precision
    os_ = sum(model_states(ZERO_PAPER, Plan("zero1", dp=64))[:3]) / gb
    osg = sum(model_states(ZERO_PAPER, Plan("zero2", dp=64))[:3]) / gb
    assert base == pytest.approx(120.0)
    assert os_ == pytest.approx(31.40625)
    assert osg == pytest.approx(16.640625)


def test_model_states_by_strategy():
    shape = ModelShape(params=1000, trainable=600, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, vocab_size=10)
    # ddp: 4*1000 weights, 4*600 grads + 4*600 reducer buckets, 8*600 Adam moments; fp32 weights under bf16 autocast
    assert model_states(shape, Plan("ddp", precision="fp32", dp=2)) == (4000, 4800, 4800, 0.0)
    assert model_states(shape, Plan("ddp", precision="bf16", dp=2)) == (4000, 4800, 4800, 0.0)
    assert model_states(shape, Plan("ddp", dp=2, gradient_as_bucket_view=True)) == (4000, 2400, 4800, 0.0)
    # bf16 zero2 over 4 ranks: 2*1000, 2*600/4, 12*600/4
    assert model_states(shape, Plan("zero2", dp=4)) == (2000, 300, 1800, 0.0)
    # zero2_cpu: optimizer states to host
    assert model_states(shape, Plan("zero2_cpu", dp=4)) == (2000, 300, 0.0, 1800)
    # hybrid3d tp=2 pp=2 zero1 dp=2: everything / 4, optimizer additionally / 2
    assert model_states(shape, Plan("hybrid3d", dp=2, tp=2, pp=2, zero_stage=1)) == (500, 300, 900, 0.0)
    # fsdp over 4: fp32 flat 4*1000/4, grads 4*600/4, moments 8*600/4
    assert model_states(shape, Plan("fsdp", dp=4)) == (1000, 600, 1200, 0.0)
    # gemini static, half the weights sharded over 4, 25% of optimizer states offloaded
    p, g, o, host = model_states(shape, Plan("gemini", dp=4, shard_param_frac=0.5, offload_optim_frac=0.25))
    assert p == pytest.approx(2 * 1000 * (0.5 + 0.5 / 4))
    assert g == 0.0
    assert o == pytest.approx(12 * 600 / 4 * 0.75)
    assert host == pytest.approx(12 * 600 / 4 * 0.25)


def test_korthikanti_layer_formulas():
    s, b, h, a = 2048, 1, 4096, 32
    assert layer_activation_bytes(s, b, h, a) == s * b * h * (34 + 5 * a * s / h)  # 956,301,312
    assert layer_activation_bytes(s, b, h, a) == 956_301_312
    assert layer_activation_bytes(s, b, h, a, tp=8) == s * b * h * (10 + 24 / 8 + 5 * a * s / (h * 8))
    assert layer_activation_bytes(s, b, h, a, tp=8, sp_in_tp=True) == s * b * h * (34 / 8 + 5 * a * s / (h * 8))
    assert layer_activation_bytes(s, b, h, a, scores=False) == s * b * h * 34


def test_activation_totals_with_and_without_checkpointing():
    # Korthikanti's GPT formula when the MLP width is unknown (16-bit bytes; fp32 doubles them)
    plan = Plan("ddp", precision="bf16", micro_batch_size=2, seq_len=1024, attention="eager")
    est = estimate(ZERO_PAPER, plan)
    s, b, h, a, L, V = 1024, 2, 4096, 32, 32, 32000
    edges = 3 * s * b * h * 2
    per = s * b * h * (34 + 5 * a * s / h)
    assert est.activations == pytest.approx(L * per + edges)
    assert est.activations_ckpt == pytest.approx(L * s * b * h * 2 + per + edges)  # inputs + one layer recomputed
    assert est.logits == pytest.approx(s * b * V * (2 + 12))
    sdpa = estimate(ZERO_PAPER, Plan("ddp", micro_batch_size=2, seq_len=1024))
    assert sdpa.activations == pytest.approx(L * s * b * h * 34 + edges)
    fp32 = estimate(ZERO_PAPER, Plan("ddp", precision="fp32", micro_batch_size=2, seq_len=1024))
    assert fp32.activations == pytest.approx(2 * (L * s * b * h * 34 + edges))
    assert fp32.logits == pytest.approx(s * b * V * (4 + 12))
    assert est.slack == pytest.approx(SLACK_FRACTION * (est.activations + est.logits))
    assert est.runtime == pytest.approx(RUNTIME_BYTES + LOAD_FRACTION * est.params)
    assert est.device == pytest.approx(est.params + est.grads + est.optimizer + est.activations + est.logits
                                       + est.slack + est.runtime)
    assert est.device_ckpt < est.device


# SmolLM2-135M's shape (config.json of the bundled model)
SMOLLM2 = ModelShape(params=134_515_008, trainable=134_515_008, hidden_size=576, num_hidden_layers=30,
                     num_attention_heads=9, vocab_size=49152, intermediate_size=1536)


def test_llama_layer_activations_counted_from_saved_tensors():
    # 11h + 4I elements per token (saved-tensor storage of transformers' LlamaDecoderLayer, SDPA)
    assert llama_layer_activation_bytes(256, 1, 576, 1536, bytes_per=4) == 256 * (11 * 576 + 4 * 1536) * 4
    # tp=2: the norms' 4h replicated, the rest halved; with sequence parallelism all halved
    assert llama_layer_activation_bytes(256, 1, 576, 1536, tp=2) == 256 * (4 * 576 + (7 * 576 + 4 * 1536) / 2) * 2
    assert llama_layer_activation_bytes(256, 1, 576, 1536, tp=2, sp_in_tp=True) == 256 * (11 * 576 + 4 * 1536) / 2 * 2
    est = estimate(SMOLLM2, Plan("ddp", precision="fp32", micro_batch_size=1, seq_len=256))
    assert est.activations == pytest.approx(30 * 256 * (11 * 576 + 4 * 1536) * 4 + 3 * 256 * 576 * 4)
    eager = estimate(SMOLLM2, Plan("ddp", precision="fp32", micro_batch_size=1, seq_len=256, attention="eager"))
    assert eager.activations - est.activations == pytest.approx(30 * 256 * 2.5 * 9 * 256 * 4)


def test_logits_term_by_vocabulary_and_tokens_and_chunk_length():
    V = 49152
    assert logits_bytes(1024, V, 4) == 1024 * V * 16  # fp32: logits + three fp32 [T, V] buffers (measured 4.0x)
    assert logits_bytes(1024, V, 2) == 1024 * V * 14  # bf16 logits + three fp32 buffers (measured 3.5x)
    # a chunked loss: whole logits + their gradient in the compute dtype, fp32 temporaries of one chunk
    assert logits_bytes(2048, V, 2, chunk_tokens=256) == 2 * 2048 * V * 2 + 256 * V * 8
    assert logits_bytes(100, V, 4, chunk_tokens=1024) == 2 * 100 * V * 4 + 100 * V * 8  # chunk longer than the batch
    whole = estimate(SMOLLM2, Plan("ddp", precision="bf16", micro_batch_size=4, seq_len=512))
    chunked = estimate(SMOLLM2, Plan("ddp", precision="bf16", micro_batch_size=4, seq_len=512, loss_chunk_tokens=1024))
    assert whole.logits == logits_bytes(2048, V, 2) and chunked.logits == logits_bytes(2048, V, 2, 1024)
    assert chunked.device < whole.device


def test_pipeline_activations_in_flight():
    # pp=4, 8 pipeline micro-batches of 8/8 = 1 row: L/4 layers x min(4, 8) in flight
    plan = Plan("hybrid3d", pp=4, num_microbatches=8, micro_batch_size=8, seq_len=512)
    est = estimate(ZERO_PAPER, plan)
    s, h, L, V = 512, 4096, 32, 32000
    assert est.activations == pytest.approx((L / 4) * s * 1 * h * 34 * 4 + 3 * s * h * 2)
    assert est.logits == pytest.approx(s * 1 * V * 14)  # the last stage's loss, one pipeline micro-batch


def test_fmt_bytes():
    assert fmt_bytes(1536) == "1.50 KiB"
    assert fmt_bytes(3 * 1024**3) == "3.00 GiB"
    assert fmt_bytes(12) == "12 B"
