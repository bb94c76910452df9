"""The Ray executor's start, with a stand-in ``ray`` module (no cluster): what it asks
``ray.init`` for and what it leaves in the driver's environment."""

from __future__ import annotations

import os
import sys
import types


def test_ray_workers_run_the_tokenizer_single_threaded_and_the_driver_env_is_restored(monkeypatch):
    """One CPU per task: TOKENIZERS_PARALLELISM=false for the workers (runtime_env, and in
    the environment Ray starts its local processes with: unset, every forked process
    printed the tokenizers fork warning), the driver's own value back afterwards."""
    from cptcore.data.executors import RayExecutor

    calls = []
    fake = types.ModuleType("ray")
    fake.is_initialized = lambda: bool(calls)
    fake.init = lambda **kw: calls.append((kw, os.environ.get("TOKENIZERS_PARALLELISM")))
    fake.cluster_resources = lambda: {"CPU": 4}
    fake.put = lambda obj: ("ref", obj)
    fake.remote = lambda **kw: (lambda fn: fn)
    fake.shutdown = lambda: None
    fake.cloudpickle = types.SimpleNamespace(register_pickle_by_value=lambda module: None)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.cloudpickle", fake.cloudpickle)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    ex = RayExecutor(2, len, ())
    (kw, during), = calls
    assert kw["runtime_env"] == {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}} and kw["num_cpus"] == 2
    assert during == "false" and os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert ex.num_proc == 2
    ex.close()
    calls.clear()
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    RayExecutor(1, len, (), address="auto").close()
    assert calls[0][0]["address"] == "auto" and calls[0][1] == "false" and "TOKENIZERS_PARALLELISM" not in os.environ
