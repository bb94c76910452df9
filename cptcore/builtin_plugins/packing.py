"""Built-in packers: ``splice`` (pretraining default), ``greedy`` (the seed's), ``bfd``."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import PackerSpec


def _splice(max_length, pad_id, options):
    from ..data.packing import SplicePacker

    return SplicePacker(max_length, pad_id, options)


def _greedy(max_length, pad_id, options):
    from ..data.packing import GreedyPacker

    return GreedyPacker(max_length, pad_id, options)


def _bfd(max_length, pad_id, options):
    from ..data.packing import BfdPacker

    return BfdPacker(max_length, pad_id, options)


@hookimpl
def cpt_register_packers():
    from ..data.packing_options import BfdOptions, SpliceOptions, WholeDocOptions

    return [
        PackerSpec(
            name="splice",
            make=_splice,
            description="concatenate documents, cut every max_length tokens; nothing dropped (pretraining)",
            splits_documents=True,
            options=SpliceOptions,
        ),
        PackerSpec(
            name="greedy",
            make=_greedy,
            description="whole documents added in order until the next does not fit (the seed's)",
            options=WholeDocOptions,
        ),
        PackerSpec(
            name="bfd",
            make=_bfd,
            description="best-fit decreasing bin packing of whole documents (SFT)",
            options=BfdOptions,
        ),
    ]
