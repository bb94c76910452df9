"""The ``shardformer.gloo_list_collectives`` compat patch (issue 12 item 14): the list
forms of ``reduce_scatter`` and ``all_to_all`` that ColossalAI's sequence-parallel
operators call, run on 2 gloo ranks through the tensor forms, with exact values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WORKER = r'''
import json, sys
import torch, torch.distributed as dist
from cptcore.compat import colossalai_cpu
from cptcore.compat.cpu_sp import GlooTensorCollectives
dist.init_process_group("gloo")
r = dist.get_rank()
raw = {}
for name, fn in (("reduce_scatter", lambda: dist.reduce_scatter(torch.empty(2), [torch.ones(2), torch.ones(2)])),
                 ("all_to_all", lambda: dist.all_to_all([torch.empty(1), torch.empty(1)], [torch.ones(1), torch.ones(1)]))):
    try:
        fn(); raw[name] = "ok"
    except RuntimeError as exc:
        raw[name] = str(exc)
filled = colossalai_cpu.apply()
from colossalai.shardformer.layer import _operation
proxy = _operation.dist
assert isinstance(proxy, GlooTensorCollectives)
# rank r contributes [10r + 0, 10r + 1 | 10r + 2, 10r + 3] (2 x 2 chunks); rank k gets chunk k summed
chunks = [torch.tensor([10.0 * r + 2 * k, 10.0 * r + 2 * k + 1]).reshape(1, 2) for k in range(2)]
out = torch.empty(1, 2)
proxy.reduce_scatter(out, chunks)
work = proxy.reduce_scatter(out2 := torch.empty(1, 2), chunks, async_op=True); work.wait()
# all_to_all with uneven sizes: rank r sends (r + 1) * (k + 1) copies of 100r + k to rank k
ins = [torch.full(((r + 1) * (k + 1),), 100.0 * r + k) for k in range(2)]
outs = [torch.empty((k + 1) * (r + 1)) for k in range(2)]
proxy.all_to_all(outs, ins)
# the real ColossalAI operator (batch 2 takes the list path)
x = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2) + 1000 * r
y = _operation._all_to_all(x, 2, None, scatter_dim=1, gather_dim=2)
json.dump({"raw": raw, "filled": filled, "rs": out.tolist(), "rs_async": out2.tolist(),
           "a2a": [o.tolist() for o in outs], "op": y.tolist(), "x": x.tolist()}, open(f"{sys.argv[1]}.{r}", "w"))
'''


def test_list_collectives_on_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path / "res")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = [json.loads(Path(f"{tmp_path / 'res'}.{r}").read_text()) for r in range(2)]
    for r, got in enumerate(res):
        # the gap: gloo refuses the list forms
        assert "does not support reduce_scatter" in got["raw"]["reduce_scatter"]
        assert "does not support alltoall" in got["raw"]["all_to_all"]
        assert "shardformer.gloo_list_collectives" in got["filled"]
        # reduce-scatter: chunk r of rank 0 + chunk r of rank 1
        expected = [[(0 + 2 * r) + (10 + 2 * r), (1 + 2 * r) + (11 + 2 * r)]]
        assert got["rs"] == expected and got["rs_async"] == expected
        # all-to-all: from rank k, (k + 1) * (r + 1) copies of 100k + r
        assert got["a2a"] == [[100.0 * k + r] * ((k + 1) * (r + 1)) for k in range(2)]
    # ColossalAI's _all_to_all: split dim 1 over ranks, gather along dim 2
    import torch

    xs = [torch.tensor(g["x"]) for g in res]
    for r, got in enumerate(res):
        want = torch.cat([x.tensor_split(2, dim=1)[r] for x in xs], dim=2)
        assert torch.equal(torch.tensor(got["op"]), want)


def test_split_gather_trains_on_gloo_exactly_as_tp_alone(tmp_path, smollm2_tokenizer_dir):
    """``cpt train`` on 2 gloo ranks: hybrid3d tp_size=2 with and without
    sequence_parallelism_mode=split_gather log the same losses and gradient norms
    (within fp32 rounding)."""
    from train_support import DATA, prepare, tiny_model

    model = tiny_model(tmp_path / "model", smollm2_tokenizer_dir)
    data = prepare(tmp_path / "data", smollm2_tokenizer_dir, [str(DATA / "zh_poetry_sample.jsonl")], max_length=64)
    cpt = str(Path(sys.executable).parent / "cpt")
    metrics = {}
    for name, extra in (("tp", []), ("sp", ["--set", "strategy.sequence_parallelism_mode=split_gather"])):
        out = tmp_path / f"out-{name}"
        proc = subprocess.run([cpt, "train", "--model", str(model), "--data", str(data), "--out", str(out),
                               "--max-steps", "3", "--micro-batch-size", "2", "--strategy", "hybrid3d",
                               "--set", "strategy.tp_size=2", "--set", "strategy.precision=fp32",
                               "--set", "logging.progress=false", "--nproc-per-node", "2", *extra],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
        metrics[name] = [(r["loss"], r["grad_norm"]) for r in rows if "loss" in r]
    assert len(metrics["tp"]) == 3
    # fp32 rounding only (the sequence split changes the summation order); a wrong
    # collective or a lost causal mask moves the loss at the 1e-3 level
    for (loss_sp, norm_sp), (loss_tp, norm_tp) in zip(metrics["sp"], metrics["tp"]):
        assert loss_sp == pytest.approx(loss_tp, rel=1e-6) and norm_sp == pytest.approx(norm_tp, rel=1e-5)
