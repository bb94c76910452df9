"""Built-in noise ``neftune``: uniform noise on the input embeddings while training
(Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning", Alg. 1).

Scaling on packed rows: per document. Algorithm 1 scales the noise of one training
instance by ``alpha / sqrt(L * d)`` with ``L`` that instance's length. Hugging Face's
implementation (``transformers.trainer_utils.neftune_post_forward_hook``, which TRL's
``SFTTrainer`` uses through ``neftune_noise_alpha``) takes ``L`` = the padded batch
length ``output.size(1)``: right for one unpadded instance per row, but a row packing
``k`` documents gets about ``sqrt(k)`` less noise per document than each would alone. So
``L`` here is the length of each token's document, read from ``position_ids`` (documents
start where ``position_ids == 0``; a document continued from the previous row counts
its part in this row), and the trailing padding (past ``lengths``) gets no noise. The
Trainer hands these per-row fields over through the spec's declared ``batch_fields``
(``handle.observe``), never through an attribute on the model. Without them (the hook
used outside the Trainer) ``L`` is the row length, as in HF.

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
        self._fields: dict = {}
        self.reattach()
        _ACTIVE[id(self)] = self

    def observe(self, fields) -> None:
        """The next forward's per-row fields (the spec's ``batch_fields``):
        ``position_ids`` int64 ``[B, S]`` and ``lengths`` int64 ``[B]`` (non-pad tokens)."""
        self._fields = dict(fields)

    def token_lengths(self, B: int, S: int, device) -> tuple:
        """``(L, keep)``: float32 ``[B, S]`` length of each token's document and a bool
        ``[B, S]`` mask of the tokens that get noise (not trailing padding)."""
        import torch

        pos = self._fields.get("position_ids")
        lengths = self._fields.get("lengths")
        if pos is None or tuple(pos.shape) != (B, S):
            L = torch.full((B, S), float(S), device=device)
        else:
            doc = torch.cumsum((pos == 0).long(), dim=1).to(device)  # [B, S] document index (0: continued)
            counts = torch.zeros(B, S + 1, device=device).scatter_add_(1, doc, torch.ones(B, S, device=device))
            L = counts.gather(1, doc)
        keep = torch.ones(B, S, dtype=torch.bool, device=device)
        if lengths is not None and len(lengths) == B:
            keep = torch.arange(S, device=device)[None, :] < lengths.to(device)[:, None]
        return L, keep

    def _noise(self, module, inputs, output):
        """Forward hook on the input embedding: ``output`` ``[B, S, d]`` float.

        Magnitude per token ``alpha / sqrt(L * d)``, ``d`` the hidden size and ``L`` the
        length of the token's document (:meth:`token_lengths`); noise ~ U(-mag, mag),
        none on trailing padding, added only when ``module.training``.
        """
        import torch

        if not module.training or self.alpha == 0:
            return output
        B, S, d = output.shape
        L, keep = self.token_lengths(B, S, output.device)
        mag = (self.alpha / torch.sqrt(L * d)) * keep
        noise = torch.empty_like(output).uniform_(-1, 1)
        return output + noise * mag.to(output.dtype).unsqueeze(-1)

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
            batch_fields=("position_ids", "lengths"),
            description="NEFTune: uniform embedding noise alpha/sqrt(L*d), L per packed document; training only (Jain et al. 2023)",
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
