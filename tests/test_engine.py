"""The training engine's seams (issue 10): the chunked causal_lm loss, objectives as
plugins (``cpt_register_objectives``), the Trainer's step on degenerate batches, fsdp's
parameter groups, the one validation pass behind ``--dry-run``, logger options and the
MLflow logger, one-line usage errors from the installed ``cpt``, torch-free modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cptcore import ObjectiveSpec, hookimpl, make_plugin_manager
from cptcore.errors import ConfigError, RegistryError

from train_support import DATA, prepare, run_config, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def reference_loss_sum(logits, labels):
    """The loss before chunking (HF ForCausalLMLoss without the division)."""
    shift = logits[:, :-1, :].float()
    return F.cross_entropy(shift.reshape(-1, shift.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100,
                           reduction="sum")


# ------------------------------------------------------------------ chunked loss
@pytest.mark.parametrize("dtype, loss_rel, grad_abs", [(torch.float32, 3e-7, 1e-7), (torch.bfloat16, 3e-7, 4e-6)])
@pytest.mark.parametrize("chunk", [1, 50, 4096])
def test_chunked_loss_equals_unchunked_within_fp32_rounding(dtype, loss_rel, grad_abs, chunk):
    """Measured: relative loss difference <= 1.6e-7 (about one fp32 ulp, 1.19e-7), gradient
    difference <= 3e-8 (fp32) / 1e-6 (bf16: the gradient is cast to bf16 either way)."""
    from cptcore.train.losses import token_loss_sum

    torch.manual_seed(0)
    x = (torch.randn(3, 67, 1000) * 3).to(dtype)
    labels = torch.randint(0, 1000, (3, 67))
    labels[torch.rand(3, 67) < 0.3] = -100
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = reference_loss_sum(a, labels), token_loss_sum(b, labels, chunk_tokens=chunk)
    (want * 0.37).backward()
    (got * 0.37).backward()
    assert got.dtype == torch.float32 and got.shape == ()
    assert abs(got.item() - want.item()) <= loss_rel * abs(want.item())
    assert (a.grad.float() - b.grad.float()).abs().max().item() <= grad_abs
    assert b.grad.dtype == dtype


def test_loss_with_no_label_token_is_zero_not_nan():
    from cptcore.train.losses import token_loss_sum

    z = torch.randn(2, 5, 7, requires_grad=True)
    loss = token_loss_sum(z, torch.full((2, 5), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))
    assert torch.isnan(reference_loss_sum(z, torch.full((2, 5), -100)) / 0)  # what a mean would give


# ------------------------------------------------------------------ objectives registry
def test_objectives_listed_selected_and_refused(cpt_cli, cpt_pm):
    code, out = cpt_cli("objectives", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["causal_lm"]["provider"] == "objective_causal_lm"
    assert rows["causal_lm"]["options"] == "chunk_tokens=1024"
    spec, options = cpt_pm.registry("objectives").resolve("causal_lm", {"chunk_tokens": "64"})
    assert options.chunk_tokens == 64
    with pytest.raises(RegistryError, match="unknown objective 'causal'; did you mean 'causal_lm'"):
        cpt_pm.registry("objectives").resolve("causal")
    with pytest.raises(ConfigError, match="unknown option for objective 'causal_lm' 'chunk'"):
        cpt_pm.registry("objectives").resolve("causal_lm", {"chunk": 3})


class _HalfLoss:
    """A plugin objective (cpt_register_objectives): half the causal_lm loss."""

    @hookimpl
    def cpt_register_objectives(self):
        from cptcore.builtin_plugins.objective_causal_lm import causal_lm_loss, count_tokens

        def half(logits, batch, options):
            loss, n = causal_lm_loss(logits, batch, None)
            return loss * 0.5, n

        return [ObjectiveSpec(name="half", loss=half, count=count_tokens)]


# ------------------------------------------------------------------ the Trainer's step
@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir):
    root = tmp_path_factory.mktemp("engine")
    small = root / "small.jsonl"
    small.write_text("\n".join((DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[:2]) + "\n",
                     encoding="utf-8")
    return {"root": root, "model": tiny_model(root / "model", smollm2_tokenizer_dir),
            "train": prepare(root / "train", smollm2_tokenizer_dir, [str(small)], max_length=64)}


@pytest.fixture()
def process_group():
    import torch.distributed as dist

    from cptcore.train.launch import init_distributed

    init_distributed(0)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def _trainer(env, out, *extra_plugins, **sets):
    from cptcore.train.plan import precheck
    from cptcore.train.trainer import Trainer

    pm = make_plugin_manager(entrypoints=False, extra=extra_plugins)
    cfg = run_config(out, env["model"], [], **sets)
    return Trainer(precheck(cfg, pm, need_data=False), pm).setup()


def _batch(seed, labelled=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 400, (2, 16), generator=g)
    labels = ids.clone() if labelled else torch.full_like(ids, -100)
    return {"input_ids": ids, "labels": labels, "position_ids": torch.arange(16).repeat(2, 1),
            "lengths": torch.tensor([16, 16])}


def test_step_without_label_tokens_is_finite_and_changes_nothing(env, tmp_path, process_group):
    """Issue 12 item 1 (the loss part): a step whose micro-batches carry no label token
    logs loss 0.0 and grad norm 0.0 (never NaN) and leaves the weights as they were;
    an all-masked micro-batch next to a labelled one changes neither loss nor gradient."""
    trainer = _trainer(env, tmp_path / "a", training__accumulation_steps=2)
    before = [p.detach().clone() for p in trainer.hf_model.parameters()]
    m = trainer.train_step([_batch(0, labelled=False), _batch(1, labelled=False)])
    assert (m.loss, m.grad_norm, m.loss_tokens) == (0.0, 0.0, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.hf_model.parameters()))
    assert trainer.state.step == 1 and trainer.scheduler.last_epoch == 1  # the schedule still advances
    mixed = trainer.train_step([_batch(2), _batch(3, labelled=False)]).loss
    alone = _trainer(env, tmp_path / "b")
    alone.train_step([_batch(0, labelled=False)])
    assert alone.train_step([_batch(2)]).loss == pytest.approx(mixed, rel=1e-6)


def test_objective_plugin_drives_the_step(env, tmp_path, process_group):
    base = _trainer(env, tmp_path / "a").train_step([_batch(5)]).loss
    half = _trainer(env, tmp_path / "b", _HalfLoss(), training__objective="half").train_step([_batch(5)]).loss
    assert half == pytest.approx(base / 2, rel=1e-6)


def test_fsdp_builds_the_optimizer_after_wrapping_and_keeps_no_decay_groups(env, tmp_path, process_group):
    """Before: TorchFSDPPlugin rebuilt the optimizer from ``defaults`` in one group, so
    norms were decayed. Now fsdp wraps first, then builds both groups."""
    from cptcore.train.optim import param_groups

    trainer = _trainer(env, tmp_path / "f", strategy__name="fsdp")
    groups = trainer.optimizer.param_groups
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.1]
    no_decay = next(g for g in groups if g["weight_decay"] == 0.0)
    assert all(p.numel() > 0 for p in no_decay["params"])
    fresh = __import__("transformers").AutoModelForCausalLM.from_pretrained(env["model"])
    expected = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in param_groups(fresh, 0.1)}
    got = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in groups}
    assert got == expected  # one process: FSDP holds every element; the split is the unwrapped model's
    m = trainer.train_step([_batch(7)])
    assert m.loss > 0 and m.grad_norm > 0


# ------------------------------------------------------------------ one validation pass
@pytest.mark.parametrize("args, message", [
    (["--data", "nope/folder"], "nope/folder: prepared data folder not found"),
    (["--lr", "-1"], "optimizer.lr must be a positive finite number, got -1.0"),
    (["--set", "schedule.warmup_steps=50", "--max-steps", "10"], "schedule.warmup_steps (50) must be in [0, max_steps=10]"),
    (["--noise", "neftune", "--set", "noise.alpah=3"], "unknown option for noise 'neftune' 'noise.alpah'; did you mean 'alpha'?"),
    (["--set", "logging.loggers=[jsonl,tensorbord]"], "unknown logger 'tensorbord'; did you mean 'tensorboard'?"),
    (["--set", "logging.options.mlflow.experiment=x"], "logging.options.mlflow: 'mlflow' is not in logging.loggers"),
    (["--objective", "z"], "unknown objective 'z'"),
    (["--out", "HELD"], "already holds a run (summary.json)"),
])
def test_dry_run_checks_what_the_run_checks(cpt_cli, env, tmp_path, args, message):
    held = tmp_path / "held"
    held.mkdir()
    (held / "summary.json").write_text("{}")
    args = [str(held) if a == "HELD" else a for a in args]
    base = ["--model", str(env["model"]), "--data", str(env["train"]), "--out", str(tmp_path / "o")]
    for extra in (["--dry-run"], []):  # the dry run and the run refuse alike, before any weight is read
        code, out = cpt_cli("train", *base, *args, *extra)
        assert code == 1 and message in out, out
        assert len([line for line in out.splitlines() if line.startswith("error:")]) == 1


def test_dry_run_prints_the_plan(cpt_cli, env, tmp_path):
    code, out = cpt_cli("train", "--dry-run", "--model", str(env["model"]), "--data", str(env["train"]),
                        "--out", str(tmp_path / "o"), "--max-steps", "7", "--micro-batch-size", "2")
    assert code == 0, out
    assert "micro-batch 2 x 64 tokens (data manifest)" in out
    assert "steps:    7 optimizer steps of 1 micro-batch(es) x 2 row(s) x dp 1" in out
    assert "objective causal_lm; loggers tensorboard, jsonl" in out
    assert not (tmp_path / "o").exists()


def test_loss_chunk_is_the_objective_option_for_the_loss_and_the_estimate(env, tmp_path, monkeypatch):
    """One path: ``training.objective_options.chunk_tokens`` is what causal_lm's loss
    chunks by and what the dry run's memory estimate counts (the spec's declaration);
    an objective that declares nothing is estimated as materialising the whole batch."""
    from cptcore.builtin_plugins.objective_causal_lm import causal_lm_loss
    from cptcore.train import losses
    from cptcore.train.dryrun import plan_dry_run
    from cptcore.train.estimate import logits_bytes

    def dry(objective="causal_lm", *extra, **sets):
        cfg = run_config(tmp_path / "o", env["model"], [str(env["train"])], training__objective=objective, **sets)
        return plan_dry_run(cfg, make_plugin_manager(entrypoints=False, extra=extra), 1)

    d = dry(training__objective_options={"chunk_tokens": 40})
    assert d.run.loss_chunk_tokens == d.plan.loss_chunk_tokens == 40
    vocab, tokens = d.shape.vocab_size, 2 * 64
    assert dict(d.memory.rows())["logits and loss"] == logits_bytes(tokens, vocab, 4, 40)
    seen = []
    monkeypatch.setattr(losses, "token_loss_sum", lambda logits, labels, chunk: seen.append(chunk) or logits.sum())
    causal_lm_loss(torch.zeros(2, 3, 5), {"labels": torch.zeros(2, 3, dtype=torch.long)}, d.run.objective.options)
    assert seen == [40]
    assert dry().plan.loss_chunk_tokens == 1024  # the option's default
    odd = dry(training__objective_options={"chunk_tokens": 3})  # fewer than the 2 rows: one position per chunk
    assert dict(odd.memory.rows())["logits and loss"] == logits_bytes(tokens, vocab, 4, 2)
    half = dry("half", _HalfLoss())
    assert half.plan.loss_chunk_tokens is None
    assert dict(half.memory.rows())["logits and loss"] == logits_bytes(tokens, vocab, 4, None)


def test_protocol_only_strategy_trains_checkpoints_and_resumes_bit_exactly(cpt_cli, env, tmp_path):
    """A strategy written from the documented protocol alone (plain torch, no ColossalAI,
    its own checkpoint files) with a plugin objective: checkpoints were refused as
    'incomplete, missing model' (the check named BoosterStrategy's files); now
    ``strategy_files`` records what ``strategy.save`` wrote and resume is bit-exact."""
    from cptcore.errors import CptError
    from cptcore.train.checkpoint import validate_checkpoint

    pm = make_plugin_manager(entrypoints=False, files=[ROOT / "tests" / "plain_strategy_plugin.py"])
    out = tmp_path / "o"
    args = ["train", "--model", str(env["model"]), "--data", str(env["train"]), "--out", str(out), "--strategy",
            "plain", "--objective", "smooth", "--max-steps", "4", "--micro-batch-size", "1",
            "--set", "checkpointing.save_every=2", "--set", "logging.progress=false"]
    code, text = cpt_cli(*args, pm=pm)
    assert code == 0, text
    metrics = out / "logs" / "metrics.jsonl"
    want = [json.loads(line)["loss"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    state = json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["strategy_files"] == ["lr_scheduler.pt", "model.pt", "optimizer.pt"]
    import shutil

    for name in ("checkpoints/step-4", "final", "summary.json"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= 2))
    code, text = cpt_cli(*args, "--resume", "auto", pm=pm)
    assert code == 0, text
    assert [json.loads(line)["loss"] for line in metrics.read_text().splitlines() if '"loss"' in line] == want
    step2 = out / "checkpoints" / "step-2"
    (step2 / "model.pt").unlink()
    with pytest.raises(CptError, match="incomplete checkpoint, missing model.pt"):
        validate_checkpoint(step2, verify=False)
    (step2 / "trainer_state.json").write_text(json.dumps(dict(state, strategy_files=["../escape"])))
    with pytest.raises(CptError, match="bad '../escape' in 'strategy_files'"):
        validate_checkpoint(step2, verify=False)


def test_precheck_loads_the_tokenizer_once(env, tmp_path, monkeypatch):
    from cptcore.train import plan as plan_module

    calls = []
    real = plan_module.load_tokenizer
    monkeypatch.setattr(plan_module, "load_tokenizer", lambda cfg: calls.append(1) or real(cfg))
    pm = make_plugin_manager(entrypoints=False)
    p = plan_module.precheck(run_config(tmp_path / "o", env["model"], [str(env["train"])], [str(env["train"])]), pm)
    assert len(calls) == 1 and p.tokenizer is not None and len(p.manifests) == len(p.eval_manifests) == 1
    assert p.manifests[0].max_length == 64 and p.pad_id == p.manifests[0].pad_id


# ------------------------------------------------------------------ loggers
def test_mlflow_logger_with_options_records_the_run(env, tmp_path):
    """The real mlflow library, local file store: metrics per step and the config."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from cptcore.train.loop import train

    out = tmp_path / "run"
    store = tmp_path / "store"
    cfg = run_config(out, env["model"], [str(env["train"])], training__max_steps=3,
                     logging__loggers=["jsonl", "mlflow"],
                     logging__options={"mlflow": {"tracking_uri": store.as_uri(), "experiment": "cpt-test",
                                                  "run_name": "tiny"}})
    summary = train(cfg, make_plugin_manager(entrypoints=False))
    client = MlflowClient(tracking_uri=store.as_uri())
    exp = client.get_experiment_by_name("cpt-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [(h.step, h.value) for h in history] == [(r["step"], r["loss"]) for r in rows]
    assert history[-1].value == summary["final_loss"]
    assert run.data.params["training.max_steps"] == "3" and run.data.params["strategy.name"] == "ddp"


def test_logger_options_are_parsed_and_checked(cpt_pm):
    from cptcore.config import load_config
    from cptcore.train.plan import resolve_plugins

    cfg = load_config(sets=["logging.options.tensorboard.flush_secs=5"])
    loggers = resolve_plugins(cfg, cpt_pm, 1)["loggers"]
    assert [(c.name, c.options) for c in loggers][0][1].flush_secs == 5
    bad = load_config(sets=["logging.options.tensorboard.flush=5"])
    with pytest.raises(ConfigError, match=r"--set logging.options.tensorboard.flush=5: unknown option for logger "
                                          r"'tensorboard' 'logging.options.tensorboard.flush'; did you mean 'flush_secs'"):
        resolve_plugins(bad, cpt_pm, 1)


# ------------------------------------------------------------------ usage errors, imports
def _installed_cpt() -> str:
    cpt = Path(sys.executable).parent / "cpt"
    if not cpt.is_file():
        pytest.skip("no installed cpt next to this python")
    return str(cpt)


@pytest.mark.parametrize("args, message", [
    (["train", "--nope"], "error: No such option: --nope"),
    (["train", "--noies", "x"], "error: No such option: --noies (Possible options: --nnodes, --noise)"),
    (["trian"], "error: No such command 'trian'. Did you mean 'train'?"),
    (["train", "--max-steps", "many"], "error: Invalid value for '--max-steps'"),
])
def test_usage_error_is_one_line_exit_2_from_the_installed_cpt(args, message):
    proc = subprocess.run([_installed_cpt(), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CPT_DEBUG": ""})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr


#: modules that must import without torch, transformers, colossalai, peft or datasets
TORCH_FREE = [
    "cptcore", "cptcore.cli.app", "cptcore.cli.train", "cptcore.cli.listing", "cptcore.config", "cptcore.contract",
    "cptcore.specs", "cptcore.registry", "cptcore.registries", "cptcore.plugins", "cptcore.hookspecs",
    "cptcore.train.plan", "cptcore.train.loop", "cptcore.train.build", "cptcore.train.data", "cptcore.train.strategy",
    "cptcore.train.sharded", "cptcore.train.dryrun", "cptcore.train.checkpoint", "cptcore.train.optim",
    "cptcore.train.metrics", "cptcore.train.parallel", "cptcore.train.estimate", "cptcore.train.launch",
    "cptcore.builtin_plugins.strategy_ddp", "cptcore.builtin_plugins.strategy_zero",
    "cptcore.builtin_plugins.strategy_gemini", "cptcore.builtin_plugins.strategy_hybrid3d",
    "cptcore.builtin_plugins.strategy_fsdp", "cptcore.builtin_plugins.loggers",
    "cptcore.builtin_plugins.noise_neftune", "cptcore.builtin_plugins.objective_causal_lm",
    # each imports cptcore's own modules at its top (issue 10): imported first, alone, to catch a cycle too
    "cptcore.quickstart", "cptcore.report", "cptcore.plugin_files", "cptcore.assets", "cptcore.model.load",
    "cptcore.model.resize", "cptcore.data.pipeline", "cptcore.data.workers", "cptcore.tokenizer.advise",
    "cptcore.recipes.stages", "cptcore.recipes.trainable", "cptcore.train.resume_check", "cptcore.cli.eval",
]
#: the modules that import torch at their top (everything else in cptcore must not)
TORCH_AT_TOP = {"cptcore.train.losses", "cptcore.train.trainer"}
HEAVY = ("torch", "transformers", "colossalai", "peft", "datasets", "mlflow")


def test_every_other_module_stays_torch_free():
    """All of cptcore but TORCH_AT_TOP, imported in one process, pulls none of HEAVY."""
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys, cptcore
        names = sorted(m.name for m in pkgutil.walk_packages(cptcore.__path__, "cptcore."))
        for name in names:
            if name not in {TORCH_AT_TOP!r}:
                importlib.import_module(name)
        print(len(names), [m for m in {HEAVY!r} if m in sys.modules])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    count, heavy = proc.stdout.strip().split(" ", 1)
    assert int(count) > 100 and heavy == "[]", proc.stdout


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_stays_torch_free(module):
    code = f"import sys, importlib; importlib.import_module({module!r}); print([m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"{module} imports {proc.stdout.strip()}"
