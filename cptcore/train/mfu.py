"""Model FLOPs utilisation (MFU): the formula, a table of device peaks, and a CPU probe.

Torch-free at import; :func:`measure_cpu_peak` imports torch when it is called (lazily,
once per process and dtype: ``functools.lru_cache``).

Formula (Chowdhery et al. 2022, "PaLM", appendix B; the same count nanoGPT's
``estimate_mfu`` uses)::

    model FLOPs per token = 6 * N + 12 * L * H * Q * T

* ``N``: the parameters that take part in a matrix multiply: every parameter of the
  model (trainable and frozen alike) except the input embedding table, whose lookup is a
  gather; the output head (``lm_head``) counts once, also when it is tied to the input
  embedding. This is Kaplan et al. 2020's non-embedding count plus their "de-embed"
  term ``d_model * n_vocab`` (at a 49k vocabulary the head is 21 % of SmolLM2-135M's
  matmul FLOPs, too much to leave out). ``6`` = 2 (forward) + 4 (backward: input and
  weight gradients) FLOPs per parameter per token. LoRA adapters count in ``N``; frozen
  weights are counted with the full 6 (the convention), though their weight gradient
  (2 of the 6) is not computed.
* ``12 * L * H * Q * T``: attention scores and the weighted sum (``QK^T`` and ``AV``,
  2 FLOPs per multiply-add, forward + 2x backward), ``L`` layers, ``H`` query heads of
  dimension ``Q``, over ``T`` attended positions, counted without the causal halving (as
  PaLM does). With packed rows ``T`` is the length of the token's own *document* (the
  spans between ``position_ids == 0``): summed over a step, ``sum_tokens T = sum_docs
  d^2`` (:func:`attended_positions`).
* Hardware FLOPs (HFU) with gradient checkpointing add one more forward:
  ``8 * N + 16 * L * H * Q * T``. MFU never counts the recompute.

``MFU = model FLOPs per step / (seconds * devices * peak FLOP/s per device)``.

Peaks (:data:`PEAKS`) are the vendors' dense (no structured sparsity) tensor-core
figures per device as ``torch.cuda.get_device_name`` names it, in FLOP/s:
``bf16``/``fp16`` for half precision, ``tf32`` for fp32 matmuls when TF32 is allowed,
``fp32`` otherwise (non-tensor FP32). Sources: NVIDIA A100 / H100 / H200 / L40S / A10 /
V100 datasheets, the Ada (RTX 4090) whitepaper appendix (FP16 tensor with FP32
accumulate), AMD Instinct MI250X / MI300X datasheets (MI250X: one GCD, which is what
torch sees as one device, is half the card).
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

T = 1e12

#: (regex on the lower-cased device name, {precision key: dense peak FLOP/s}); first match wins.
PEAKS: tuple[tuple[str, Mapping[str, float]], ...] = (
    (r"h100.*nvl", {"bf16": 835 * T, "fp16": 835 * T, "tf32": 418 * T, "fp32": 60 * T}),
    (r"h100.*pcie", {"bf16": 756 * T, "fp16": 756 * T, "tf32": 378 * T, "fp32": 51 * T}),
    (r"h100|gh200", {"bf16": 989 * T, "fp16": 989 * T, "tf32": 495 * T, "fp32": 67 * T}),
    (r"h200.*nvl", {"bf16": 835 * T, "fp16": 835 * T, "tf32": 418 * T, "fp32": 60 * T}),
    (r"h200", {"bf16": 989 * T, "fp16": 989 * T, "tf32": 495 * T, "fp32": 67 * T}),
    (r"a100", {"bf16": 312 * T, "fp16": 312 * T, "tf32": 156 * T, "fp32": 19.5 * T}),
    (r"l40s", {"bf16": 362 * T, "fp16": 362 * T, "tf32": 183 * T, "fp32": 91.6 * T}),
    (r"\ba10\b", {"bf16": 125 * T, "fp16": 125 * T, "tf32": 62.5 * T, "fp32": 31.2 * T}),
    (r"rtx 4090", {"bf16": 165 * T, "fp16": 165 * T, "tf32": 82.6 * T, "fp32": 82.6 * T}),
    (r"v100.*pcie", {"fp16": 112 * T, "fp32": 14 * T}),
    (r"v100", {"fp16": 125 * T, "fp32": 15.7 * T}),
    (r"mi300x", {"bf16": 1307 * T, "fp16": 1307 * T, "tf32": 654 * T, "fp32": 163 * T}),
    (r"mi250", {"bf16": 191.5 * T, "fp16": 191.5 * T, "fp32": 47.9 * T}),
)


def table_peak(device_name: str, precision: str, tf32: bool = False) -> float | None:
    """The dense peak FLOP/s of one device from :data:`PEAKS`, or ``None`` when the
    device (or its precision: V100 has no bf16 tensor cores) is not in the table.

    Args:
        device_name: ``torch.cuda.get_device_name()``, e.g. ``"NVIDIA H100 80GB HBM3"``.
        precision: ``"bf16" | "fp16" | "fp32"`` (the strategy's compute precision).
        tf32: fp32 matmuls run on TF32 tensor cores (``torch.backends.cuda.matmul.allow_tf32``).
    """
    key = "tf32" if precision == "fp32" and tf32 else precision
    name = device_name.lower()
    for pattern, peaks in PEAKS:
        if re.search(pattern, name):
            return peaks.get(key)
    return None


@functools.lru_cache(maxsize=None)
def measure_cpu_peak(dtype: str = "fp32", size: int = 512, repeats: int = 5) -> float:
    """Measured matmul FLOP/s of this process on the CPU: the best of ``repeats``
    ``[size, size] @ [size, size]`` products (``2 * size**3`` FLOPs each) after one
    warm-up, in ``dtype`` (``"fp32" | "bf16" | "fp16"``), with the process's torch
    thread count. About 0.1 s at the default size; cached per process and arguments.
    A measured peak is a best case of this kernel, not a hardware specification, so
    MFU on CPU reads as "fraction of what a large matmul reaches here"."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    # a private generator: the probe runs after a resume restored the global RNG, so drawing
    # from it would change every later random number (NEFTune noise) and break exact resume
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dt)
    b = torch.randn(size, size, generator=gen).to(dt)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / max(best, 1e-9)


@dataclass(frozen=True)
class FlopsModel:
    """The model shape the FLOP count needs.

    Attributes:
        n_params: ``N`` of the module docstring (matmul parameters, head counted once).
        n_layers, n_heads, head_dim: ``L``, ``H`` (query heads), ``Q``.
    """

    n_params: int
    n_layers: int
    n_heads: int
    head_dim: int

    def model_flops(self, tokens: float, attended: float) -> float:
        """``6 N tokens + 12 L H Q attended`` FLOPs, where ``attended`` = the sum over
        tokens of their attended positions ``T`` (:func:`attended_positions`)."""
        return 6 * self.n_params * tokens + 12 * self.n_layers * self.n_heads * self.head_dim * attended

    def hardware_flops(self, tokens: float, attended: float, recompute: bool) -> float:
        """:meth:`model_flops` plus one more forward (``2 N`` and ``4 L H Q T`` per
        token) when activations are recomputed (gradient checkpointing)."""
        extra = 2 * self.n_params * tokens + 4 * self.n_layers * self.n_heads * self.head_dim * attended
        return self.model_flops(tokens, attended) + (extra if recompute else 0.0)

    def per_token(self, seq_len: int) -> float:
        """PaLM's ``6 N + 12 L H Q T`` for one token of a document of ``seq_len`` tokens."""
        return self.model_flops(1, seq_len)


def flops_model(model_config: Any, n_params: int) -> FlopsModel:
    """A :class:`FlopsModel` from a Hugging Face config (``num_hidden_layers``,
    ``num_attention_heads``, ``hidden_size``, optional ``head_dim``)."""
    heads = int(model_config.num_attention_heads)
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return FlopsModel(int(n_params), int(model_config.num_hidden_layers), heads, int(head_dim))


def matmul_params(named_parameters: Iterable[tuple[str, Any]]) -> int:
    """Elements of the distinct parameters (told apart by identity: a tied head counts
    once) of ``model.named_parameters()`` (objects with ``numel()``)."""
    seen: dict[int, int] = {}
    for _, p in named_parameters:
        seen[id(p)] = p.numel()
    return sum(seen.values())


def head_is_embedding(model: Any) -> bool:
    """True when the output head shares its weight with the input embedding."""
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if get_out is not None else None
    return out is not None and out.weight is model.get_input_embeddings().weight


def count_n(model: Any) -> int:
    """``N`` of a Hugging Face (or peft) causal LM: all distinct parameters, less the
    input embedding table unless it is tied to the head (see the module docstring), and
    less the frozen originals peft keeps beside its trainable copies
    (``modules_to_save``, i.e. ``lora.train_embeddings``: ``*.original_module``, unused in
    the forward) unless one of them is the head's weight."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    head_id = id(head.weight) if head is not None else None
    drop = {id(p) for name, module in model.named_modules() if name.endswith("original_module")
            for p in module.parameters()}
    if not head_is_embedding(model):
        drop.add(id(model.get_input_embeddings().weight))
    drop.discard(head_id)
    return matmul_params((n, p) for n, p in model.named_parameters() if id(p) not in drop)


def attended_positions(position_ids_rows: Iterable[Any], lengths: Iterable[int] | None = None) -> int:
    """``sum over tokens of T`` with ``T`` the token's document length: ``sum_docs d^2``,
    documents being the spans that start at each ``position_ids == 0`` of a row.

    Args:
        position_ids_rows: rows of position ids (``[B, S]`` int arrays or tensors on CPU).
        lengths: non-pad tokens per row (``batch["lengths"]``); the tail past it (pad
            tokens) is ignored. ``None``: whole rows.
    """
    import numpy as np

    pos = np.asarray(position_ids_rows)
    lens = [pos.shape[1]] * pos.shape[0] if lengths is None else [int(x) for x in np.asarray(lengths)]
    total = 0
    for row, n in zip(pos, lens):
        starts = np.flatnonzero(row[:n] == 0)
        if n == 0:
            continue
        if starts.size == 0 or starts[0] != 0:
            starts = np.concatenate([[0], starts])
        d = np.diff(np.concatenate([starts, [n]]))
        total += int((d.astype(np.int64) ** 2).sum())
    return total


@dataclass(frozen=True)
class Meter:
    """MFU of steps: ``flops`` the model, ``peak`` FLOP/s of one device, ``devices``
    (the world size: every process computes on one device), ``recompute`` (gradient
    checkpointing), ``source`` where the peak came from (for the log)."""

    flops: FlopsModel
    peak: float
    devices: int
    recompute: bool = False
    source: str = ""

    def mfu(self, tokens: float, attended: float, seconds: float) -> float:
        """Fraction (0..1) of the devices' peak: :meth:`FlopsModel.model_flops` of the
        step's ``tokens`` (all ranks) over ``seconds``; 0.0 for ``seconds <= 0``."""
        if seconds <= 0 or self.peak <= 0:
            return 0.0
        return self.flops.model_flops(tokens, attended) / (seconds * self.devices * self.peak)

    def hfu(self, tokens: float, attended: float, seconds: float) -> float:
        """Hardware FLOPs utilisation: like :meth:`mfu` with the recompute counted."""
        if seconds <= 0 or self.peak <= 0:
            return 0.0
        return self.flops.hardware_flops(tokens, attended, self.recompute) / (seconds * self.devices * self.peak)


def resolve_peak(stated: float | None, device_type: str, device_name: str, precision: str,
                 tf32: bool = False) -> tuple[float | None, str]:
    """The peak FLOP/s per device and where it came from: ``stated``
    (``training.peak_flops`` / ``--peak-flops``) when given, else :func:`table_peak` on
    CUDA, else :func:`measure_cpu_peak` on CPU; ``(None, reason)`` for an accelerator
    missing from the table (MFU is then not logged)."""
    if stated:
        return float(stated), "stated (training.peak_flops)"
    if device_type == "cpu":
        return measure_cpu_peak(precision), f"measured CPU matmul peak ({precision})"
    peak = table_peak(device_name, precision, tf32)
    if peak is None:
        return None, f"{device_name!r} ({precision}) is not in cptcore.train.mfu.PEAKS; set training.peak_flops"
    return peak, f"table: {device_name} {'tf32' if precision == 'fp32' and tf32 else precision}"
