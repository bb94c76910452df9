"""LR schedules as plugins (issue 14 item 4), the run's length from epochs / tokens and the
export shard size (issue 12 item 8).

The reference formulas here are written out independently of
``cptcore/recipes/schedules.py`` (from docs/training.md#learning-rate-schedules)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cptcore import hookimpl, make_plugin_manager
from cptcore.errors import ConfigError, RegistryError
from cptcore.specs import ScheduleSpec

from train_support import DATA, prepare, run_config, tiny_model

LR = 1e-3


# ------------------------------------------------------------------ reference formulas
def old_lr_lambda(name, warmup_steps, max_steps, min_lr_ratio):
    """cptcore.train.optim.lr_lambda as it was before schedules became plugins (verbatim body)."""
    def f(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        span = max(1, max_steps - warmup_steps)
        t = min(1.0, max(0.0, (step - warmup_steps) / span))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    return f


def g(shape, p):
    p = min(1.0, max(0.0, p))
    return {"linear": 1 - p, "cosine": 0.5 * (1 + math.cos(math.pi * p)), "1-sqrt": 1 - math.sqrt(p)}[shape]


def expected(name, s, n, w, m, **o):
    if name == "cosine":
        return old_lr_lambda("cosine", w, n, m)(s)
    if name == "constant":
        return (s + 1) / w if s < w else 1.0
    if name == "wsd":
        k = min(n - w, round(o["decay_fraction"] * n))
        d = n - k
        if s < w:
            return (s + 1) / w
        return 1.0 if s < d else m + (1 - m) * g(o["decay_shape"], (s - d) / k)
    if name == "rewarm":
        a = o.get("start_ratio", m)
        if s < w:
            return a + (1 - a) * s / w
        return m + (1 - m) * g(o["decay_shape"], (s - w) / max(1, n - w))
    raise AssertionError(name)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir):
    root = tmp_path_factory.mktemp("sched")
    small = root / "small.jsonl"  # a few documents: about ten 64-token rows
    small.write_text("\n".join((DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[:3]) + "\n",
                     encoding="utf-8")
    return {"root": root, "model": tiny_model(root / "model", smollm2_tokenizer_dir),
            "train": prepare(root / "train", smollm2_tokenizer_dir, [str(small)], max_length=64)}


def _pm(*extra):
    return make_plugin_manager(entrypoints=False, extra=extra)


def _rows(folder: Path) -> int:
    return json.loads((folder / "manifest.json").read_text())["packs"]


# ------------------------------------------------------------------ formulas and registry
@pytest.mark.parametrize("w, n, m", [(0, 1, 0.1), (2, 10, 0.1), (3, 7, 0.0), (10, 10, 0.5), (0, 50, 1.0)])
def test_cosine_is_bit_identical_to_the_former_schedule(w, n, m):
    from cptcore.train.optim import resolve_schedule

    schedule = resolve_schedule(run_config(Path("o"), Path("m"), [], schedule__name="cosine", schedule__warmup_steps=w,
                                           schedule__min_lr_ratio=m).schedule, _pm().registry("schedules"))
    f, old = schedule.multiplier(n), old_lr_lambda("cosine", w, n, m)
    assert [f(s) for s in range(n + 3)] == [old(s) for s in range(n + 3)]


@pytest.mark.parametrize("name, options", [
    ("constant", {}), ("wsd", {"decay_fraction": 0.3, "decay_shape": "linear"}),
    ("wsd", {"decay_fraction": 0.25, "decay_shape": "cosine"}), ("wsd", {"decay_fraction": 1.0, "decay_shape": "1-sqrt"}),
    ("rewarm", {"decay_shape": "cosine"}), ("rewarm", {"start_ratio": 0.0, "decay_shape": "linear"}),
])
def test_builtin_formulas(name, options):
    pm = _pm()
    for w, n, m in ((0, 5, 0.1), (2, 12, 0.05), (4, 20, 0.0)):
        cfg = run_config(Path("o"), Path("m"), [], schedule__name=name, schedule__warmup_steps=w,
                         schedule__min_lr_ratio=m, **{f"schedule__{k}": v for k, v in options.items()})
        from cptcore.train.optim import resolve_schedule

        f = resolve_schedule(cfg.schedule, pm.registry("schedules"), cfg).multiplier(n)
        want = {k: v for k, v in options.items()}
        for s in range(n + 2):
            assert f(s) == pytest.approx(expected(name, s, n, w, m, **want), rel=1e-12, abs=1e-15), (s, w, n, m)
    if name == "rewarm":  # continuity: the first update of a re-warmed stage is where the decayed one ended
        assert f(0) == options.get("start_ratio", 0.0)


def test_schedule_errors_are_one_line(cpt_pm):
    from cptcore.config import load_config
    from cptcore.train.optim import resolve_schedule

    reg = cpt_pm.registry("schedules")

    def resolve(*sets):
        cfg = load_config(sets=list(sets))
        return resolve_schedule(cfg.schedule, reg, cfg)

    with pytest.raises(RegistryError, match="unknown schedule 'cosin'; did you mean 'cosine'"):
        resolve("schedule.name=cosin")
    with pytest.raises(ConfigError, match=r"--set schedule.warmup_step=3: unknown key 'schedule.warmup_step'; "
                                          r"did you mean 'warmup_steps'\?"):
        resolve("schedule.warmup_step=3")
    with pytest.raises(ConfigError, match="unknown option for schedule 'wsd' 'schedule.decay_fractoin'; did you mean 'decay_fraction'"):
        resolve("schedule.name=wsd", "schedule.decay_fractoin=0.1")
    with pytest.raises(ConfigError, match="schedule.decay_shape: unknown decay shape 'sqrt'"):
        resolve("schedule.name=wsd", "schedule.decay_shape=sqrt").multiplier(10)
    with pytest.raises(ConfigError, match="schedule.decay_fraction .1.5. must be in"):
        resolve("schedule.name=wsd", "schedule.decay_fraction=1.5").multiplier(10)
    with pytest.raises(ConfigError, match="'schedule.decay_fraction' is set twice"):
        load_config(sets=["schedule.options.decay_fraction=0.1", "schedule.decay_fraction=0.2"])
    assert resolve("schedule.name=warmup_stable_decay", "schedule.options.decay_shape=linear").options.decay_shape == "linear"
    with pytest.raises(ConfigError, match=r"schedule.warmup_steps \(5\) must be in \[0, max_steps=4\]"):
        resolve("schedule.warmup_steps=5").multiplier(4)


def test_plugin_schedule_from_cpt_register_schedules(env, tmp_path, cpt_cli):
    """A schedule registered by a plugin is listed, resolved with its options, and drives
    the run's LR."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class HalfOptions:
        factor: float = 0.5

    class Plugin:
        @hookimpl
        def cpt_register_schedules(self):
            return [ScheduleSpec(name="half", options=HalfOptions, description="a fixed fraction of the peak",
                                 build=lambda options, *, warmup_steps, max_steps, min_lr_ratio, **more:
                                 (lambda s: options.factor))]

    pm = _pm(Plugin())
    code, out = cpt_cli("schedules", "--json", pm=pm)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["half"]["options"] == "factor=0.5" and rows["wsd"]["provider"] == "schedules"
    from cptcore.train.plan import precheck

    cfg = run_config(tmp_path / "o", env["model"], [str(env["train"])], schedule__name="half", schedule__factor=0.25)
    plan = precheck(cfg, pm, dry_run=True)
    assert plan.schedule.name == "half" and plan.schedule.multiplier(plan.config.training.max_steps)(3) == 0.25


# ------------------------------------------------------------------ the LR logged by cpt train
RUNS = {  # schedule -> (extra flags, options); the run length comes from a different key each time
    "cosine": (["--epochs", "0.5"], {}),
    "constant": (["--max-tokens", "0.64K"], {}),
    "wsd": (["--max-steps", "9"], {"decay_fraction": 0.4, "decay_shape": "1-sqrt"}),
    "rewarm": (["--max-steps", "8"], {"decay_shape": "linear"}),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_lr_logged_per_step_equals_the_documented_formula(name, env, tmp_path, cpt_cli):
    flags, options = RUNS[name]
    w, m, mbs = 2, 0.2, 2
    out = tmp_path / "o"
    args = ["train", "--model", str(env["model"]), "--data", str(env["train"]), "--out", str(out), "--lr", str(LR),
            "--micro-batch-size", str(mbs), "--set", "logging.loggers=[jsonl]", "--set", "logging.progress=false",
            "--set", f"schedule.name={name}", "--set", f"schedule.warmup_steps={w}",
            "--set", f"schedule.min_lr_ratio={m}", *flags]
    for key, value in options.items():
        args += ["--set", f"schedule.{key}={value}"]
    if name == "wsd":  # the training export, sharded small (checked below)
        args += ["--max-shard-size", "100KB"]
    code, text = cpt_cli(*args)
    assert code == 0, text
    if name == "cosine":  # half an epoch of whole micro-batches, 1 per step: ceil(0.5 * (rows // mbs) / 1)
        n = math.ceil(0.5 * (_rows(env["train"]) // mbs))
    elif name == "constant":  # 640 tokens / (64 positions x 2 rows) per step
        n = math.ceil(640 / (64 * mbs))
    else:
        n = int(flags[1])
    lines = [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["lr"] for r in lines if "lr" in r}
    assert sorted(logged) == list(range(1, n + 1))
    for step, lr in logged.items():  # logged step k is the k-th update: s = k - 1
        assert lr == pytest.approx(LR * expected(name, step - 1, n, w, m, **options), rel=1e-12), (step, lr)
    saved = (out / "config.yaml").read_text()
    assert f"max_steps: {n}\n" in saved and "epochs: null" in saved and "max_tokens: null" in saved
    if name == "wsd":
        _check_sharded_export(out, env)


def _check_sharded_export(out: Path, env: dict) -> None:
    """OUT/final at 100KB shards: several shards plus the index, loadable, and equal to
    ``cpt export --max-shard-size`` of the final checkpoint in one 50MB shard."""
    import torch
    from transformers import AutoModelForCausalLM

    final = out / "final"
    shards = sorted(final.glob("model-*.safetensors"))
    index = json.loads((final / "model.safetensors.index.json").read_text())
    assert len(shards) >= 3 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert not (final / "model.safetensors").exists()
    sharded = AutoModelForCausalLM.from_pretrained(final)
    from typer.testing import CliRunner

    from cptcore.cli import make_app

    ckpt = sorted((out / "checkpoints").glob("step-*"))[-1]
    one = out / "one"
    result = CliRunner().invoke(make_app(_pm()), ["export", str(ckpt), "--out", str(one), "--max-shard-size", "50MB"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in one.glob("*.safetensors")) == ["model.safetensors"]
    single = AutoModelForCausalLM.from_pretrained(one)
    a, b = sharded.state_dict(), single.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ run length and shard size: refusals
@pytest.mark.parametrize("args, message", [
    (["--max-steps", "5", "--epochs", "1"], "training.max_steps (command line) and training.epochs (command line) "
                                            "both set the run's length: keep one "
                                            "(--set training.max_steps=null clears the first)"),
    (["--epochs", "1", "--set", "training.max_tokens=2M"], "training.epochs (command line) and training.max_tokens "
                                                           "(--set training.max_tokens=2M) both set"),
    (["--max-tokens", "2Q"], "training.max_tokens: expected a count such as 2000000, 2M or 1.5B, got '2Q'"),
    (["--max-tokens", "1.5"], "training.max_tokens: '1.5' is not a whole number"),
    (["--epochs", "0"], "training.epochs must be a positive number, got 0.0"),
    (["--max-shard-size", "5XB"], "training.max_shard_size: expected a size such as 500MB or 2GB"),
    (["--epochs", "1e308"], "resolves to more than 1e+12 optimizer steps"),
    (["--max-tokens", "999999999999T"], "resolves to more than 1e+12 optimizer steps"),
])
def test_length_and_shard_size_refused_in_one_line(args, message, env, tmp_path, cpt_cli):
    base = ["--model", str(env["model"]), "--data", str(env["train"]), "--out", str(tmp_path / "o")]
    code, out = cpt_cli("train", *base, *args, "--dry-run")
    assert code == 1 and message in out, out
    assert len([line for line in out.splitlines() if line.startswith("error:")]) == 1


def test_export_refuses_a_bad_shard_size_before_reading(cpt_cli, tmp_path):
    for size, message in (("-3MB", "--max-shard-size must be at least 1 byte"),
                          ("3 GiB", "--max-shard-size: expected a size such as 500MB or 2GB")):
        code, out = cpt_cli("export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"), "--max-shard-size", size)
        assert code == 1 and message in out, out


def test_dry_run_prints_resolved_steps_and_tokens(env, tmp_path, cpt_cli):
    base = ["train", "--dry-run", "--model", str(env["model"]), "--data", str(env["train"]), "--out", str(tmp_path / "o"),
            "--micro-batch-size", "2", "--accumulation-steps", "3"]
    rows = _rows(env["train"])
    code, out = cpt_cli(*base, "--epochs", "2")
    steps = math.ceil(2 * (rows // 2) / 3)
    assert code == 0 and f"steps:    {steps} optimizer steps of 3 micro-batch(es) x 2 row(s) x dp 1 " \
                          f"({steps * 384:,} tokens, 384 per step; length from training.epochs=2)" in out, out
    code, out = cpt_cli(*base, "--max-tokens", "1M")
    assert code == 0 and f"steps:    {math.ceil(10**6 / 384)} optimizer steps" in out
    assert "(1,000,320 tokens, 384 per step; length from training.max_tokens=1,000,000)" in out  # 2605 x 384
    code, out = cpt_cli(*base)
    assert code == 0 and "(38,400 tokens, 384 per step; length from default" in out, out


def test_counts_and_sizes():
    from cptcore.units import parse_count, parse_shard_size

    assert [parse_count(v, "k") for v in ("2M", "1.5B", "500k", "2_000", "1,000", 7, "1T", "0.5K")] == \
        [2_000_000, 1_500_000_000, 500_000, 2000, 1000, 7, 10**12, 500]
    assert [parse_count(v, "k") for v in ("2e6", 2.0e6, "1.5e3", "1e+20")] == [2_000_000, 2_000_000, 1500, 10**20]
    from cptcore.recipes import pipeline, stages  # one parser for every count: stage budgets, recipes
    assert stages.parse_tokens is parse_count and pipeline.parse_tokens is parse_count
    assert [parse_shard_size(v) for v in ("500MB", "2GB", "1.5GB", "10KB", 123, "77")] == \
        [500 * 10**6, 2 * 10**9, 1_500_000_000, 10_000, 123, 77]
    for bad in ("0", "2GiB", "MB", True):
        with pytest.raises(ConfigError, match="--max-shard-size"):
            parse_shard_size(bad)


@pytest.mark.parametrize("sets, message", [
    (["lora.use_dora=true"], "lora.use_dora=true does nothing without lora.enabled=true"),
    (["lora.use_rslora=true"], "lora.use_rslora=true does nothing without lora.enabled=true"),
    (["lora.enabled=true", "lora.r=0"], "lora.r must be an integer >= 1, got 0"),
    (["lora.enabled=true", "lora.alpha=-1"], "lora.alpha must be a positive finite number, got -1.0"),
    (["lora.enabled=true", "lora.dropout=1"], "lora.dropout must be in [0, 1), got 1.0"),
])
def test_lora_values_refused_before_the_model_loads(sets, message, env, tmp_path, cpt_cli):
    """peft raised a ValueError traceback for r=0 after loading the model; use_dora /
    use_rslora without lora.enabled were silently ignored."""
    base = ["--model", str(env["model"]), "--data", str(env["train"]), "--out", str(tmp_path / "o")]
    code, out = cpt_cli("train", *base, *[a for s in sets for a in ("--set", s)], "--dry-run")
    assert code == 1 and f"error: {message}" in out, out
