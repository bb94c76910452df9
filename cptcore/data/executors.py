"""Where chunk jobs run, the built-in executors of the ``executors`` registry
(``cpt_register_executors``): ``local`` (a thread or a ``fork`` pool on this machine,
:class:`cptcore.data.workers.Executor`) or ``ray`` (tasks on a Ray cluster).

Both take a job ``fn(*args, items)`` and have the same interface: ``num_proc`` (jobs in
flight), ``submit(items) -> future`` with ``future.get()``, and ``close()``. Results are
consumed in submission order by the caller, so the executor never changes the output:
``cpt prepare`` and ``cpt clean`` write the same bytes with either.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any, Callable

from ..errors import ConfigError, CptError
from ..plugins import FILE_PLUGIN_PREFIX
from .workers import Executor

def make_executor(pm: Any, name: str, num_proc: int, fn: Callable, args: tuple, address: str | None = None) -> Any:
    """The executor ``name`` (registry ``executors``) running ``fn(*args, items)``.

    Raises:
        RegistryError: unknown executor (did-you-mean).
        ConfigError: ``--ray-address`` for an executor that takes none, Ray not installed
            or the cluster not reachable.
    """
    return pm.registry("executors").get(name).make(num_proc, fn, args, address)


def check_executor(pm: Any, name: str, address: str | None) -> None:
    """Fail early (before any output is written) on an unknown executor or an address
    given to ``local``.

    Raises:
        RegistryError, ConfigError: as :func:`make_executor`.
    """
    spec = pm.registry("executors").get(name)
    if address and spec.name == "local":
        raise ConfigError("--ray-address needs --executor ray")
    if address and spec.name == "ray":
        check_ray_address(address)


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at a ``HOST:PORT`` / ``ray://HOST:PORT``
    address (``ray.init`` retries a wrong one for minutes). ``auto`` and other forms
    are left to Ray.

    Raises:
        ConfigError: no TCP connection to ``HOST:PORT`` within ``timeout`` seconds.
    """
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"--ray-address {address}: nothing answers at {host}:{port} ({exc}); "
                          f"is the head running ('ray start --head --port={port}')?") from None


def make_local(num_proc: int, fn: Callable, args: tuple, address: str | None = None) -> Any:
    """:class:`cptcore.data.workers.Executor` (a thread, or a fork pool of ``num_proc``)."""
    if address:
        raise ConfigError("--ray-address needs --executor ray")

    return Executor(num_proc, fn, args)


def make_ray(num_proc: int, fn: Callable, args: tuple, address: str | None = None) -> "RayExecutor":
    return RayExecutor(num_proc, fn, args, address)


_RAY_JOBS: dict[str, tuple] = {}  # in each Ray worker process: token -> (fn, args)


def _ray_task(token: str, box: list, items: list) -> Any:
    """Runs in a Ray worker: fetch ``(fn, args)`` once per worker process and job, then
    ``fn(*args, items)``. ``box`` holds the ObjectRef (inside a list, so Ray does not
    fetch it for every task)."""
    job = _RAY_JOBS.get(token)
    if job is None:
        import ray

        _RAY_JOBS.clear()
        job = _RAY_JOBS[token] = ray.get(box[0])
    fn, args = job
    return fn(*args, items)


class _RayFuture:
    def __init__(self, ref: Any):
        self.ref = ref

    def get(self) -> Any:
        import ray

        try:
            return ray.get(self.ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, CptError):
                raise cause from None
            raise


def _pickle_plugin_files_by_value() -> None:
    """Make Ray's cloudpickle send the code of every loaded plugin file (``cpt --plugin
    FILE``) with the objects that use it: a filter, tokenize function or packer defined
    in such a file is pickled by reference otherwise, and no Ray worker can import the
    module (``ModuleNotFoundError: No module named 'cpt_file_plugin_...'``). Plugins
    installed as packages stay by reference (install them on every node)."""
    from ray import cloudpickle

    for name, module in list(sys.modules.items()):
        if name.startswith(FILE_PLUGIN_PREFIX) and module is not None:
            cloudpickle.register_pickle_by_value(module)


class RayExecutor:
    """Runs chunk jobs as Ray tasks (one CPU each). With ``address`` it joins a running
    cluster (``ray start --head`` / ``ray start --address``; cptcore must be installed
    on every node); without, it starts a local Ray instance with ``num_proc`` CPUs and
    stops it on :meth:`close`. ``fn`` and ``args`` are put in the object store once
    (cloudpickle); every chunk is a task. Jobs in flight: ``num_proc``, or the
    cluster's CPU count when ``num_proc`` is 1."""

    def __init__(self, num_proc: int, fn: Callable, args: tuple, address: str | None = None):
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - ray ships with colossalai
            raise ConfigError("--executor ray needs the 'ray' package (pip install ray)") from exc
        self._owns = False
        if not ray.is_initialized():
            # each task has one CPU: the Rust tokenizer's own thread pool in every task
            # would oversubscribe the node (as in the local fork pool, cptcore.data.workers);
            # set in the driver's environment while Ray starts too, since a process it
            # forks after the tokenizer ran prints a 4-line warning unless the variable is set
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                      "runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}}
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=max(1, num_proc), **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"--executor ray: cannot start or reach Ray ({address or 'local'}): {exc}") from exc
            finally:
                if saved is None:
                    del os.environ["TOKENIZERS_PARALLELISM"]
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = saved
            self._owns = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.num_proc = num_proc if num_proc > 1 else max(1, cpus)
        self._token = uuid.uuid4().hex
        _pickle_plugin_files_by_value()
        self._job = ray.put((fn, args))
        self._remote = ray.remote(num_cpus=1, max_retries=3)(_ray_task)

    def submit(self, items: list) -> _RayFuture:
        return _RayFuture(self._remote.remote(self._token, [self._job], items))

    def close(self) -> None:
        import ray

        self._job = None
        if self._owns and ray.is_initialized():
            ray.shutdown()
        self._owns = False
