"""Built-in packers: ``splice`` (pretraining default), ``greedy`` (the seed's), ``bfd``."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import PackerSpec
from ..data.packing import BfdPacker, GreedyPacker, SplicePacker
from ..data.packing_options import BfdOptions, SpliceOptions, WholeDocOptions


@hookimpl
def cpt_register_packers():
    return [
        PackerSpec(
            name="splice",
            make=SplicePacker,
            description="concatenate documents, cut every max_length tokens; nothing dropped (pretraining)",
            splits_documents=True,
            options=SpliceOptions,
        ),
        PackerSpec(
            name="greedy",
            make=GreedyPacker,
            description="whole documents added in order until the next does not fit (the seed's)",
            options=WholeDocOptions,
        ),
        PackerSpec(
            name="bfd",
            make=BfdPacker,
            description="best-fit decreasing bin packing of whole documents (SFT)",
            options=BfdOptions,
        ),
    ]
