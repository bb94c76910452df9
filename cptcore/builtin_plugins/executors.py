"""Built-in executors for ``cpt prepare`` / ``cpt clean --executor``: ``local``, ``ray``."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import ExecutorSpec
from ..data.executors import make_local, make_ray


@hookimpl
def cpt_register_executors():
    return [
        ExecutorSpec(name="local", make=make_local, description="this machine: a thread (--num-proc 1) or a fork pool of --num-proc processes"),
        ExecutorSpec(name="ray", make=make_ray, description="Ray tasks: a local instance, or a cluster with --ray-address (ray start --head)"),
    ]
