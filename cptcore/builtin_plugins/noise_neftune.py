"""Built-in noise ``neftune``: uniform noise on the input embeddings while training
(Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning", Alg. 1).

Also wraps ``cpt_save`` to detach every active noise hook of the saved model while it is
written, then re-attach it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from ..hookspecs import hookimpl
from ..specs import NoiseSpec

#: id(model) -> handles attached to it (so cpt_save can detach them while saving)
_ACTIVE: "weakref.WeakValueDictionary[int, _Handle]" = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class NEFTuneOptions:
    """``noise: {name: neftune, alpha: 5.0}``; the paper uses 5-15."""

    alpha: float = 5.0

    def __post_init__(self):
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")


class _Handle:
    """Owns the forward hook; ``remove()`` detaches, ``reattach()`` puts it back."""

    def __init__(self, model, alpha: float):
        self.model = model
        self.alpha = alpha
        self._hook = None
        self.reattach()
        _ACTIVE[id(self)] = self

    def _noise(self, module, inputs, output):
        """Forward hook on the input embedding: ``output`` ``[B, S, d]`` float.

        Magnitude per sample ``alpha / sqrt(L * d)`` with ``d`` the hidden size and ``L``
        the sample's *real* length: ``model.cpt_real_lengths`` (int64 ``[B]``, set by the
        training loop before each forward: the number of non-pad tokens of the row - for a
        packed row all its documents together, not the padded length). Without it, ``L``
        is the row length ``S``. Noise ~ U(-mag, mag), added only when ``module.training``.
        """
        import torch

        if not module.training or self.alpha == 0:
            return output
        B, S, d = output.shape
        lengths = getattr(self.model, "cpt_real_lengths", None)
        if lengths is None or len(lengths) != B:
            L = torch.full((B,), float(S), device=output.device)
        else:
            L = lengths.to(device=output.device, dtype=torch.float32).clamp(min=1)
        mag = (self.alpha / torch.sqrt(L * d)).to(output.dtype).view(B, 1, 1)
        noise = torch.empty_like(output).uniform_(-1, 1)
        return output + noise * mag

    def remove(self):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def reattach(self):
        if self._hook is None:
            self._hook = self.model.get_input_embeddings().register_forward_hook(self._noise)

    @property
    def attached(self) -> bool:
        return self._hook is not None


def attach_neftune(model, options: NEFTuneOptions | None):
    """Attach NEFTune to ``model`` (a HF or peft causal LM); returns the handle."""
    return _Handle(model, (options or NEFTuneOptions()).alpha)


def handles_for(model) -> list:
    """Active (attached) noise handles whose model is ``model`` or wraps/is wrapped by it."""
    out = []
    for h in list(_ACTIVE.values()):
        m = h.model
        if h.attached and (m is model or getattr(m, "base_model", None) is model
                           or getattr(model, "base_model", None) is m
                           or m.get_input_embeddings() is model.get_input_embeddings()):
            out.append(h)
    return out


@hookimpl
def cpt_register_noise():
    return [
        NoiseSpec(
            name="neftune",
            attach=attach_neftune,
            options=NEFTuneOptions,
            description="NEFTune: uniform embedding noise alpha/sqrt(L*d), training mode only (Jain et al. 2023)",
        )
    ]


@hookimpl(wrapper=True)
def cpt_save(model, out_dir, config, tokenizer):
    detached = handles_for(model) if hasattr(model, "get_input_embeddings") else []
    for h in detached:
        h.remove()
    try:
        return (yield)
    finally:
        for h in detached:
            h.reattach()
