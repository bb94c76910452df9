"""Built-in executors for ``cpt prepare`` / ``cpt clean --executor``: ``local``, ``ray``."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import ExecutorSpec


def _local(num_proc, fn, args, address):
    from ..data.executors import make_local

    return make_local(num_proc, fn, args, address)


def _ray(num_proc, fn, args, address):
    from ..data.executors import make_ray

    return make_ray(num_proc, fn, args, address)


@hookimpl
def cpt_register_executors():
    return [
        ExecutorSpec(name="local", make=_local, description="this machine: a thread (--num-proc 1) or a fork pool of --num-proc processes"),
        ExecutorSpec(name="ray", make=_ray, description="Ray tasks: a local instance, or a cluster with --ray-address (ray start --head)"),
    ]
