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

Activations, per transformer layer, micro-batch b, sequence s, hidden h, MLP width I,
heads a, stored for the backward pass (``w`` bytes per element: 4 in fp32, 2 otherwise;
an approximation under autocast, which keeps RMSNorm and the residual stream in fp32):

* LLaMA-family layers (``intermediate_size`` known): ``s·b·(11·h + 4·I)·w``, counted on
  this repository's models by summing the storage of every tensor autograd saves
  (``torch.autograd.graph.saved_tensors_hooks``) for transformers 4.51's
  ``LlamaDecoderLayer`` with SDPA: two RMSNorms (input, normalised output: 2h each),
  q/k/v after ``repeat_kv`` and the attention output (4h, grouped-query heads are
  expanded before SDPA), the ``o_proj`` input (h), and the SwiGLU MLP's gate, SiLU, up
  and product (4I). Under tensor parallelism 4h of it is replicated, the rest / t (all
  / t with sequence parallelism inside TP);
* other models: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", section 4, equations 1-3, in 16-bit bytes: ``s·b·h·(34 +
  5·a·s/h)``; with tensor parallel t ``s·b·h·(10 + 24/t + 5·a·s/(h·t))``; with tensor +
  sequence parallel ``s·b·h·(34/t + 5·a·s/(h·t))``;
* eager attention adds the ``s x s`` scores (Korthikanti's ``5·a·s/h`` term, 2.5·a·s
  elements per token); SDPA and flash attention never materialise them;
* gradient checkpointing (full recomputation): each layer's input ``s·b·h·w`` plus one
  layer recomputed in full during the backward;
* embeddings and the final norm: ``3·s·b·h·w``.

The output layer and the loss (``logits and loss``, :func:`logits_bytes`) scale with
vocabulary x tokens, V·T: without chunking, the logits in the compute dtype (w bytes)
and three fp32 ``[T, V]`` buffers alive together in the backward (the fp32 copy or
log-probabilities, their gradient and the logits' gradient), ``T·V·(w + 12)``, measured
on CPU with torch 2.5.1 (4.0 x ``T·V·4`` for fp32, 3.5 x for bf16). A loss computed
``chunk_tokens`` at a time keeps the whole logits and their gradient in the compute
dtype and fp32 temporaries for one chunk only: ``2·T·V·w + min(c, T)·V·8``.
hybrid3d gathers logits over TP, so no /t. Under 1F1B pipelining each stage holds up to
``min(pp, m)`` in-flight pipeline micro-batches of ``b/m`` rows for its ``L/pp`` layers
(Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters
Using Megatron-LM", section 2.2).

What no formula gives, fitted on CPU (``benchmarks/memory.py``: SmolLM2-135M 1 x 256 and
4 x 512, a tiny LLaMA with SmolLM2's vocabulary 8 x 128, each with and without
checkpointing; fp32 AdamW, ddp, one process; the three constants solve the three runs
without checkpointing exactly, the three with checkpointing then land at 0.90-0.99 of
measured: the estimate still overstates what checkpointing saves, by up to 650 MiB at
4 x 512):

* ``allocator slack and transients``: :data:`SLACK_FRACTION` of activations + logits
  (freed blocks the allocator keeps, backward temporaries);
* ``runtime and load-time``: :data:`RUNTIME_BYTES` (tokenizer, data, loop, beyond the
  bare imports that ``benchmarks/memory.py`` measures as its floor) plus
  :data:`LOAD_FRACTION` of the weight bytes (what loading leaves resident). On a GPU
  this part is host memory, not device memory.

The runtime floor itself (torch, transformers and ColossalAI imported: about 470 MiB on
CPU) is not part of the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3
MiB = 1024**2

#: fitted on CPU (see the module docstring): share of activations + logits the allocator
#: and backward temporaries add
SLACK_FRACTION = 0.15
#: fitted on CPU: process memory beyond the import floor (tokenizer, data, loop), bytes
RUNTIME_BYTES = 280 * MiB
#: fitted on CPU: share of the weight bytes loading leaves resident
LOAD_FRACTION = 0.4


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from the model config (HF ``config.json`` names)."""

    params: int  # all parameters (elements)
    trainable: int  # parameters with requires_grad
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    intermediate_size: int = 0  # MLP width; 0: unknown (Korthikanti's GPT formula)


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
    loss_chunk_tokens: int | None = None  # tokens per loss chunk (the objective's declaration); None: whole micro-batch


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank. ``device`` sums what stays on the accelerator without gradient
    checkpointing, ``device_ckpt`` with it; ``host`` what offloading moves to CPU memory.
    ``runtime`` (process and load-time memory, host memory on a GPU) is in both totals:
    on CPU it is the same memory."""

    params: float
    grads: float
    optimizer: float
    activations: float
    activations_ckpt: float
    host: float
    logits: float = 0.0
    slack: float = 0.0
    slack_ckpt: float = 0.0
    runtime: float = 0.0

    @property
    def device(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.logits + self.slack + self.runtime

    @property
    def device_ckpt(self) -> float:
        return (self.params + self.grads + self.optimizer + self.activations_ckpt + self.logits + self.slack_ckpt
                + self.runtime)

    def rows(self) -> list[tuple[str, float]]:
        """``(label, bytes)`` rows for a table."""
        return [
            ("parameters", self.params),
            ("gradients", self.grads),
            ("optimizer states", self.optimizer),
            ("activations", self.activations),
            ("activations (checkpointing)", self.activations_ckpt),
            ("logits and loss", self.logits),
            ("allocator slack and transients", self.slack),
            ("runtime and load-time", self.runtime),
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


def llama_layer_activation_bytes(s: int, b: float, h: int, inter: int, *, tp: int = 1, sp_in_tp: bool = False,
                                 bytes_per: int = 2) -> float:
    """One LLaMA decoder layer's saved activations (SDPA), ``s·b·(11·h + 4·I)`` elements of
    ``bytes_per`` bytes; under tensor parallel ``tp`` the norms' 4h stay replicated unless
    ``sp_in_tp`` (see the module docstring for how it was counted)."""
    split = 7 * h + 4 * inter
    replicated = 4 * h
    per = (replicated + split) / tp if sp_in_tp else replicated + split / tp
    return s * b * per * bytes_per


def logits_bytes(tokens: float, vocab: int, bytes_per: int, chunk_tokens: int | None = None) -> float:
    """Peak bytes of the output layer's logits, the token-summed cross-entropy and their
    gradients for ``tokens`` (rows x positions) over a ``vocab``-sized vocabulary.

    Args:
        bytes_per: bytes of the compute dtype the logits come out in (4 fp32, 2 bf16/fp16).
        chunk_tokens: tokens per loss chunk; ``None`` computes the loss over the whole
            micro-batch at once (``T·V·(w + 12)``: the logits and three fp32 buffers,
            measured); a chunked loss keeps the logits and their gradient
            (``2·T·V·w``) and fp32 temporaries of one chunk (``c·V·8``).
    """
    if chunk_tokens is None:
        return tokens * vocab * (bytes_per + 12)
    return 2 * tokens * vocab * bytes_per + min(chunk_tokens, tokens) * vocab * 8


def activations(shape: ModelShape, plan: Plan) -> tuple[float, float]:
    """``(without, with)`` gradient checkpointing, bytes per rank, logits excluded
    (:func:`logits_bytes`)."""
    s = plan.seq_len // max(1, plan.sp)
    w = 4 if plan.precision == "fp32" else 2
    eager = plan.attention == "eager"
    layers = shape.num_hidden_layers / plan.pp
    if plan.pp > 1:
        m = max(1, plan.num_microbatches)
        b = plan.micro_batch_size / m
        in_flight = min(plan.pp, m)
    else:
        b, in_flight = float(plan.micro_batch_size), 1
    h, a = shape.hidden_size, shape.num_attention_heads
    if shape.intermediate_size:
        per_layer = llama_layer_activation_bytes(s, b, h, shape.intermediate_size, tp=plan.tp, sp_in_tp=plan.sp_in_tp,
                                                 bytes_per=w)
        if eager:
            per_layer += s * b * 2.5 * a * s / plan.tp * w
    else:  # Korthikanti's 16-bit bytes, doubled for fp32
        per_layer = layer_activation_bytes(s, b, h, a, tp=plan.tp, sp_in_tp=plan.sp_in_tp, scores=eager) * w / 2
    edges = 3 * s * b * h * w  # embedding output, final norm
    full = layers * per_layer * in_flight + edges
    ckpt = layers * s * b * h * w * in_flight + per_layer + edges
    return full, ckpt


def estimate(shape: ModelShape, plan: Plan) -> MemoryEstimate:
    """Memory per rank for ``shape`` trained under ``plan`` (see the module docstring)."""
    params, grads, opt, host = model_states(shape, plan)
    act, act_ckpt = activations(shape, plan)
    w = 4 if plan.precision == "fp32" else 2
    tokens = plan.micro_batch_size * plan.seq_len / max(1, plan.sp)
    if plan.pp > 1:
        tokens /= max(1, plan.num_microbatches)  # the last stage computes the loss per pipeline micro-batch
    chunk = plan.loss_chunk_tokens
    if chunk is not None:  # a chunk is whole positions of every row: at least one position
        rows = max(1, int(plan.micro_batch_size / (max(1, plan.num_microbatches) if plan.pp > 1 else 1)))
        chunk = rows * max(1, chunk // rows)
    logits = logits_bytes(tokens, shape.vocab_size, w, chunk)
    slack = SLACK_FRACTION * (act + logits)
    slack_ckpt = SLACK_FRACTION * (act_ckpt + logits)
    runtime = RUNTIME_BYTES + LOAD_FRACTION * params
    return MemoryEstimate(params, grads, opt, act, act_ckpt, host, logits, slack, slack_ckpt, runtime)


def fmt_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units)."""
    for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
