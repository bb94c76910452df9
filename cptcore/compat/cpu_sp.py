"""Sequence parallelism on CPU: ShardFormer's collectives in their list forms, which gloo
lacks, rewritten onto the tensor forms gloo has.

Measured with torch 2.5.1, 2 gloo ranks: ``dist.reduce_scatter(out, [tensors])`` raises
"ProcessGroupGloo does not support reduce_scatter" and ``dist.all_to_all([outs],
[ins])`` raises "Backend gloo does not support alltoall", while
``dist.reduce_scatter_tensor`` and ``dist.all_to_all_single`` (with split sizes) work.
ColossalAI's sequence-parallel operators call the list forms (see the patch), so every
``sequence_parallelism_mode`` failed on CPU at the first forward or backward.
"""

from __future__ import annotations

from typing import Any

from ._patch import Patch, source_has


class _Done:
    """A completed ``Work`` handle (what ``async_op=True`` returns after a synchronous call)."""

    def wait(self, *_: Any, **__: Any) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


class GlooTensorCollectives:
    """Stands in for the ``torch.distributed`` module inside ShardFormer's
    ``_operation.py``: every attribute is torch.distributed's, except ``reduce_scatter``
    and ``all_to_all``, which on a gloo group run as ``reduce_scatter_tensor`` /
    ``all_to_all_single`` on the flattened, concatenated tensors (same results: rank r
    receives the reduction of every rank's ``input_list[r]``, resp. every rank's
    ``input_list[r]`` in rank order)."""

    def __getattr__(self, name: str) -> Any:
        import torch.distributed as dist

        return getattr(dist, name)

    @staticmethod
    def _gloo(group: Any) -> bool:
        import torch.distributed as dist

        return dist.get_backend(group) == "gloo"

    def reduce_scatter(self, output: Any, input_list: Any, op: Any = None, group: Any = None, async_op: bool = False):
        import torch
        import torch.distributed as dist

        op = dist.ReduceOp.SUM if op is None else op
        if not self._gloo(group):
            return dist.reduce_scatter(output, input_list, op=op, group=group, async_op=async_op)
        flat = torch.cat([t.contiguous().view(-1) for t in input_list])
        out = torch.empty(output.numel(), dtype=output.dtype, device=output.device)
        dist.reduce_scatter_tensor(out, flat, op=op, group=group)
        output.copy_(out.view_as(output))
        return _Done() if async_op else None

    def all_to_all(self, output_list: Any, input_list: Any, group: Any = None, async_op: bool = False):
        import torch
        import torch.distributed as dist

        if not self._gloo(group):
            return dist.all_to_all(output_list, input_list, group=group, async_op=async_op)
        flat = torch.cat([t.contiguous().view(-1) for t in input_list])
        sizes_out = [t.numel() for t in output_list]
        out = torch.empty(sum(sizes_out), dtype=output_list[0].dtype, device=output_list[0].device)
        dist.all_to_all_single(out, flat, output_split_sizes=sizes_out, input_split_sizes=[t.numel() for t in input_list],
                               group=group)
        for target, part in zip(output_list, out.split(sizes_out)):
            target.copy_(part.view_as(target))
        return _Done() if async_op else None


def _gap_list_collectives() -> bool:
    from colossalai.shardformer.layer import _operation

    return not isinstance(_operation.dist, GlooTensorCollectives) and source_has(_operation._all_to_all, "dist.all_to_all(")


def _fill_list_collectives() -> None:
    # colossalai 0.5.0 shardformer/layer/_operation.py:522, 598, 751, 845, 933 and 1248 call
    # dist.reduce_scatter(output, list) and :1259 (_all_to_all) dist.all_to_all(list, list),
    # the list forms gloo does not implement. Replace the module's `dist` with a proxy
    # that maps them onto reduce_scatter_tensor / all_to_all_single on gloo groups and
    # forwards everything else (and every non-gloo group) unchanged.
    from colossalai.shardformer.layer import _operation

    _operation.dist = GlooTensorCollectives()


PATCHES = (Patch("shardformer.gloo_list_collectives", "shardformer/layer/_operation.py:522",  # also :598, 751, 845, 933, 1248, 1259

                 _gap_list_collectives, _fill_list_collectives),)
