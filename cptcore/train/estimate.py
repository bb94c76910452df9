"""Memory per rank, estimated from the parameter counts, the layout and the strategy.

Pure arithmetic (no torch) used by ``cpt train --dry-run``. All sizes are bytes.

Model states (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training
Trillion Parameter Models", section 3.1 and Figure 1): mixed-precision Adam keeps, per
trainable parameter, 2 bytes of half-precision weights (2Ψ), 2 bytes of gradients (2Ψ)
and K = 12 bytes of optimizer state (fp32 master weights, momentum and variance: KΨ).
In fp32 training the weights and gradients take 4 bytes each and K = 8 (momentum,
variance; the weights are their own master). Frozen parameters take only their weight
bytes. Partitioning over the N_d data-parallel ranks:

* ``ddp``: nothing partitioned; the weights stay fp32 whatever ``precision`` (bf16/fp16
  run under autocast), so 4Ψ + 4Ψ + 8Ψ; DDP's reducer keeps its gradient buckets as a
  second copy of the gradients unless ``gradient_as_bucket_view`` (PyTorch
  ``DistributedDataParallel`` docs: the saving "equal to the total gradients size");
* ZeRO-1 (``zero1``; ``hybrid3d`` zero_stage=1): optimizer states / N_d;
* ZeRO-2 (``zero2``; ``hybrid3d`` zero_stage=2): gradients and optimizer states / N_d;
* ZeRO-3 family: ``fsdp`` (FULL_SHARD: everything / N_d; FSDP keeps fp32 flat
  parameters and reduces in the compute dtype) and ``gemini`` (static placement:
  ``shard_param_frac`` of the weights / N_d, gradients reuse the weight chunks,
  optimizer states / N_d; the ``offload_*_frac`` fractions move to host memory);
* tensor and pipeline parallelism divide every model state by tp·pp (ShardFormer
  splits each layer's matrices over tp and the layers over pp; embeddings assumed
  spread evenly: an approximation).
* ``cpu_offload`` (zero2_cpu, hybrid3d): the optimizer states (and fp32 master
  weights) live in host memory.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", section 4, equations 1-5), per transformer layer for micro-batch
b, sequence s, hidden h, heads a, 16-bit activations:

* no parallelism: ``s·b·h·(34 + 5·a·s/h)``;
* tensor parallel t: ``s·b·h·(10 + 24/t + 5·a·s/(h·t))``;
* tensor + sequence parallel: ``s·b·h·(34/t + 5·a·s/(h·t))``;
* full recomputation (gradient checkpointing): ``2·s·b·h`` (each layer's input).

The ``5·a·s/h`` term (attention scores, softmax and its dropout mask) is dropped for
flash attention and SDPA's memory-efficient kernels, which never materialise the
``s x s`` scores. LLaMA's SwiGLU MLP and RMSNorm differ from the GPT layer that
formula was derived for: treat the result as an estimate. fp32 activations double it.
The output layer adds ``s·b·V·(2 + 4)`` bytes (half-precision logits and the fp32 copy
our token-summed cross-entropy makes; hybrid3d gathers logits over TP, so no /t). Under 1F1B pipelining each stage holds up to
``min(pp, m)`` in-flight pipeline micro-batches of ``b/m`` rows for its ``L/pp`` layers
(Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters
Using Megatron-LM", section 2.2).
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from the model config (HF ``config.json`` names)."""

    params: int  # all parameters (elements)
    trainable: int  # parameters with requires_grad
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int


@dataclass(frozen=True)
class Plan:
    """The parallel plan the estimate is for."""

    strategy: str  # ddp | zero1 | zero2 | zero2_cpu | gemini | gemini_auto | hybrid3d | fsdp
    precision: str = "bf16"  # fp32 | bf16 | fp16
    dp: int = 1
    tp: int = 1
    pp: int = 1
    sp_in_tp: bool = False  # split_gather / ring sequence parallelism
    sp: int = 1  # all_to_all sequence-parallel degree (divides s)
    zero_stage: int = 0  # hybrid3d's ZeRO stage
    cpu_offload: bool = False
    shard_param_frac: float = 1.0  # gemini
    offload_optim_frac: float = 0.0  # gemini
    offload_param_frac: float = 0.0  # gemini
    num_microbatches: int = 1  # pipeline micro-batches per micro-batch
    micro_batch_size: int = 1
    seq_len: int = 2048
    attention: str = "sdpa"  # eager | sdpa | flash_attention_2
    gradient_as_bucket_view: bool = False  # ddp: buckets alias the gradients


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank. ``device`` sums what stays on the accelerator (activations
    without checkpointing); ``host`` what offloading moves to CPU memory."""

    params: float
    grads: float
    optimizer: float
    activations: float
    activations_ckpt: float
    host: float

    @property
    def device(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations

    @property
    def device_ckpt(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations_ckpt

    def rows(self) -> list[tuple[str, float]]:
        """``(label, bytes)`` rows for a table."""
        return [
            ("parameters", self.params),
            ("gradients", self.grads),
            ("optimizer states", self.optimizer),
            ("activations", self.activations),
            ("activations (checkpointing)", self.activations_ckpt),
            ("total", self.device),
            ("total (checkpointing)", self.device_ckpt),
            ("host (offloaded)", self.host),
        ]


def state_bytes(precision: str) -> tuple[int, int, int]:
    """``(weight, gradient, optimizer K)`` bytes per parameter (ZeRO paper, section 3.1)."""
    if precision == "fp32":
        return 4, 4, 8
    return 2, 2, 12


def model_states(shape: ModelShape, plan: Plan) -> tuple[float, float, float, float]:
    """``(params, grads, optimizer, host)`` bytes per rank; see the module docstring."""
    w, g, k = state_bytes(plan.precision)
    psi, psi_t = float(shape.params), float(shape.trainable)
    mp = plan.tp * plan.pp
    nd = plan.dp
    name = plan.strategy
    host = 0.0
    if name == "ddp":
        w, g, k = state_bytes("fp32")  # autocast: fp32 weights, gradients, Adam moments
        copies = 1 if plan.gradient_as_bucket_view else 2
        return w * psi, g * psi_t * copies, k * psi_t, 0.0
    if name == "fsdp":
        # fp32 flat parameters sharded; gradients in fp32 after the reduce-scatter
        params, grads, opt = 4 * psi / nd, 4 * psi_t / nd, 8 * psi_t / nd
    elif name.startswith("gemini"):
        frac = plan.shard_param_frac
        params = w * psi * (1 - frac + frac / nd)
        grads = 0.0  # reuse the weight chunks (reuse_fp16_chunk)
        opt = k * psi_t / nd
        host = opt * plan.offload_optim_frac + params * plan.offload_param_frac
        opt *= 1 - plan.offload_optim_frac
        params *= 1 - plan.offload_param_frac
    else:
        stage = {"zero1": 1, "zero2": 2, "zero2_cpu": 2}.get(name, plan.zero_stage if name == "hybrid3d" else 0)
        params = w * psi / mp
        grads = g * psi_t / mp / (nd if stage >= 2 else 1)
        opt = k * psi_t / mp / (nd if stage >= 1 else 1)
        if plan.cpu_offload or name == "zero2_cpu":
            host, opt = opt, 0.0
    return params, grads, opt, host


def layer_activation_bytes(s: int, b: float, h: int, a: int, *, tp: int = 1, sp_in_tp: bool = False,
                           scores: bool = True) -> float:
    """Korthikanti et al. 2022 eq. 1-3: one layer's stored activations, 16-bit bytes."""
    attn = 5 * a * s / (h * tp) if scores else 0.0
    if tp == 1:
        per = 34 + attn
    elif sp_in_tp:
        per = 34 / tp + attn
    else:
        per = 10 + 24 / tp + attn
    return s * b * h * per


def activations(shape: ModelShape, plan: Plan) -> tuple[float, float]:
    """``(without, with)`` gradient checkpointing, bytes per rank."""
    s = plan.seq_len // max(1, plan.sp)
    scale = 2.0 if plan.precision == "fp32" else 1.0
    scores = plan.attention == "eager"
    layers = shape.num_hidden_layers / plan.pp
    if plan.pp > 1:
        m = max(1, plan.num_microbatches)
        b = plan.micro_batch_size / m
        in_flight = min(plan.pp, m)
    else:
        b, in_flight = float(plan.micro_batch_size), 1
    h, a = shape.hidden_size, shape.num_attention_heads
    per_layer = layer_activation_bytes(s, b, h, a, tp=plan.tp, sp_in_tp=plan.sp_in_tp, scores=scores)
    logits = s * b * shape.vocab_size * (2 + 4)  # gathered over tp (parallel_output=False); last pp stage
    full = (layers * per_layer * in_flight) * scale + logits
    ckpt = (layers * 2 * s * b * h * in_flight) * scale + logits
    return full, ckpt


def estimate(shape: ModelShape, plan: Plan) -> MemoryEstimate:
    """Memory per rank for ``shape`` trained under ``plan`` (see the module docstring)."""
    params, grads, opt, host = model_states(shape, plan)
    act, act_ckpt = activations(shape, plan)
    return MemoryEstimate(params, grads, opt, act, act_ckpt, host)


def fmt_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units)."""
    for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
