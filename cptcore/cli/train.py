"""``cpt train``, ``cpt export`` and ``cpt generate``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer

from .numbers import finite
from ..errors import ConfigError
from .app import is_rank_zero
from ..config import load_config
from ..plugin_files import with_plugin_files
from ..train.dryrun import dry_run as run_dry
from ..train.export_cli import export_checkpoint, generate
from ..train.launch import in_launched_process, launch
from ..train.lifetime import tie_to_launcher
from ..train.loop import precheck, train
from ..train.runlock import probe
from ..units import parse_shard_size

if TYPE_CHECKING:
    from ..plugins import CptPluginManager


def overrides_from_flags(**flags: Any) -> dict:
    """Map CLI flag values to dotted config keys (``None`` = not given)."""
    mapping = {
        "model": "model.path", "eval_data": "data.eval", "eval_mc": "data.eval_mc", "out": "training.out_dir",
        "strategy": "strategy.name", "noise": "noise.name", "max_steps": "training.max_steps",
        "save_every": "checkpointing.save_every", "eval_every": "training.eval_every",
        "micro_batch_size": "training.micro_batch_size", "accumulation_steps": "training.accumulation_steps",
        "lr": "optimizer.lr", "seed": "training.seed", "resume": "checkpointing.resume",
        "data": "data.train", "freeze": "training.freeze", "objective": "training.objective",
        "peak_flops": "training.peak_flops",
        "epochs": "training.epochs", "max_tokens": "training.max_tokens", "max_shard_size": "training.max_shard_size",
    }
    out = {}
    for flag, key in mapping.items():
        value = flags.get(flag)
        if value is None or value == []:
            continue
        if flag in ("eval_data", "eval_mc") and isinstance(value, str):
            value = [value]
        out[key] = value
    return out


def register(app: typer.Typer, pm: "CptPluginManager") -> None:
    @app.command("train")
    def train_command(
        config: Optional[Path] = typer.Option(None, "--config", help="Run config YAML."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Override any config key: section.key=value (repeatable)."),
        model: Optional[str] = typer.Option(None, "--model", help="Hugging Face folder or .gguf file."),
        data: Optional[List[str]] = typer.Option(None, "--data", help="Prepared folder PATH[:WEIGHT][:norepeat] (repeatable; data.mixing says what weights mean)."),
        eval_data: Optional[List[str]] = typer.Option(None, "--eval-data", help="Named held-out prepared folder NAME=PATH, or PATH (named after its folder); repeatable."),
        eval_mc: Optional[List[str]] = typer.Option(None, "--eval-mc", help="Multiple-choice JSONL NAME=FILE scored at step 0 and every eval (eval/NAME/acc); repeatable."),
        out: Optional[str] = typer.Option(None, "--out", help="Output folder (OUT)."),
        strategy: Optional[str] = typer.Option(None, "--strategy", help="Strategy name (cpt strategies)."),
        noise: Optional[str] = typer.Option(None, "--noise", help="Embedding noise name (cpt noise), e.g. neftune."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (at most one of --max-steps, --epochs, --max-tokens; none: 100)."),
        epochs: Optional[float] = typer.Option(None, "--epochs", callback=finite, help="Passes over the training mixture, resolved to steps (e.g. 2, 0.5)."),
        max_tokens: Optional[str] = typer.Option(None, "--max-tokens", help="Training tokens (row positions), resolved to steps: 2000000, 2M, 1.5B."),
        max_shard_size: Optional[str] = typer.Option(None, "--max-shard-size", help="Safetensors shard size of OUT/final (HF syntax: 500MB, 2GB; default 2GB)."),
        save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps (0: at the end only)."),
        eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate every N steps (0: at the end only)."),
        micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", help="Rows per rank per forward."),
        accumulation_steps: Optional[int] = typer.Option(None, "--accumulation-steps", help="Micro-batches per optimizer step."),
        lr: Optional[float] = typer.Option(None, "--lr", callback=finite, help="Peak learning rate."),
        seed: Optional[int] = typer.Option(None, "--seed", metavar="<int>", min=0, help="Random seed (at most 2**32 - 1)."),
        resume: Optional[str] = typer.Option(None, "--resume", help="auto (newest checkpoint in OUT) or a checkpoint folder."),
        freeze: Optional[str] = typer.Option(None, "--freeze", help="none | non-embeddings."),
        objective: Optional[str] = typer.Option(None, "--objective", help="Training objective (cpt objectives); default causal_lm."),
        peak_flops: Optional[float] = typer.Option(None, "--peak-flops", callback=finite, help="Dense peak FLOP/s of one device, for MFU (default: table by GPU name; measured on CPU)."),
        nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", metavar="<int>", min=1, help="Start N ranks on this node (torchrun's agent runs in this process)."),
        nnodes: int = typer.Option(1, "--nnodes", metavar="<int>", min=1, help="Nodes taking part (each runs this command with its --node-rank)."),
        node_rank: int = typer.Option(0, "--node-rank", help="This node's rank, 0..nnodes-1 (node 0 hosts the rendezvous)."),
        master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Address of node 0 (needed with --nnodes > 1)."),
        master_port: Optional[int] = typer.Option(None, "--master-port", metavar="<int>", min=1, max=65535, help="Rendezvous port on node 0 (default: free port on one node, 29500 on several)."),
        rendezvous_timeout: float = typer.Option(300.0, "--rendezvous-timeout", callback=finite, help="Seconds to wait for every node to join before failing with the missing node(s) named."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Run every check the run makes, print the plan, layout, parameter counts and memory estimate; do not train."),
    ) -> None:
        """Train (continual pretraining or SFT) on prepared data; export to OUT/final."""

        tie_to_launcher()  # a rank started by torchrun dies with its launcher
        if nproc_per_node is None and nnodes == 1 and (node_rank or master_addr or master_port):
            raise ConfigError("--node-rank, --master-addr and --master-port need --nproc-per-node or --nnodes > 1")
        overrides = overrides_from_flags(
            model=model, data=data, eval_data=eval_data, eval_mc=eval_mc, out=out, strategy=strategy, noise=noise,
            max_steps=max_steps, epochs=epochs, max_tokens=max_tokens, max_shard_size=max_shard_size, save_every=save_every, eval_every=eval_every,
            micro_batch_size=micro_batch_size, accumulation_steps=accumulation_steps, lr=lr, seed=seed,
            resume=resume, freeze=freeze, objective=objective, peak_flops=peak_flops,
        )
        cfg = load_config(config, overrides=overrides, sets=set_ or [])

        cfg = with_plugin_files(cfg, pm)  # record --plugin files; load a resumed run's
        if dry_run:
            run_dry(cfg, pm, nproc_per_node, nnodes, echo=typer.echo)
            return
        launching = (nproc_per_node is not None or nnodes > 1) and not in_launched_process()
        if launching:
            def check_first() -> None:  # fail fast, before any process starts
                precheck(cfg, pm, (nproc_per_node or 1) * nnodes)
                if node_rank == 0:  # another run holding OUT: one line now, not from rank 0 later

                    probe(cfg.training.out_dir)

            argv = sys.argv[1:] if sys.argv and Path(sys.argv[0]).name in ("cpt", "main.py") else None

            def check_then_argv() -> None:  # the run's own errors first, then how it was started
                check_first()
                if argv is None:
                    raise ConfigError("--nproc-per-node needs to be run from the 'cpt' command line")

            code = launch(argv or [], nproc_per_node or 1, nnodes, node_rank, master_addr, master_port, rendezvous_timeout,
                          precheck=check_then_argv,
                          echo=lambda line: typer.echo(line, err=True))
            if code:
                raise typer.Exit(code)
            return

        summary = train(cfg, pm)
        if is_rank_zero():  # the rank that exports OUT/final (train.loop: "rank 0 writes")
            typer.echo(f"trained {summary['steps']} steps; final loss {summary['final_loss']}; exported to {summary['final_dir']}")

    @app.command("export")
    def export_command(
        checkpoint: Path = typer.Argument(..., help="A checkpoint folder OUT/checkpoints/step-N."),
        out: Path = typer.Option(..., "--out", help="Folder to write the Hugging Face model to (must be empty or new)."),
        merge_lora: bool = typer.Option(False, "--merge-lora", help="Merge LoRA adapters into the base weights."),
        model: Optional[str] = typer.Option(None, "--model", help="Base model folder (instead of the checkpoint config's model.path)."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder (instead of the checkpoint config's)."),
        trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the base model's own Python code (never taken from the checkpoint)."),
        max_shard_size: Optional[str] = typer.Option(None, "--max-shard-size", help="Safetensors shard size (HF syntax: 500MB, 2GB; default: the checkpoint config's training.max_shard_size)."),
    ) -> None:
        """Export any checkpoint as a Hugging Face folder (LoRA: adapter, or merged)."""
        if max_shard_size is not None:
            parse_shard_size(max_shard_size)  # one line before the checkpoint is read
        path = export_checkpoint(pm, checkpoint, out, merge_lora=merge_lora, model=model, tokenizer=tokenizer,
                                 trust_remote_code=trust_remote_code, max_shard_size=max_shard_size)
        typer.echo(f"exported {checkpoint} -> {path}")

    @app.command("generate")
    def generate_command(
        model: str = typer.Argument(..., help="Hugging Face folder (e.g. OUT/final), .gguf file, peft adapter folder, or checkpoint folder OUT/checkpoints/step-N."),
        prompt: List[str] = typer.Option(..., "--prompt", help="Prompt text (repeatable)."),
        max_new_tokens: int = typer.Option(40, "--max-new-tokens", help="Tokens to generate."),
        temperature: float = typer.Option(0.0, "--temperature", callback=finite, help="0 = greedy; > 0 samples."),
        top_p: float = typer.Option(1.0, "--top-p", callback=finite, help="Nucleus sampling mass (with --temperature > 0)."),
        seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    ) -> None:
        """Generate a continuation of each prompt, for a smoke look at a model or a checkpoint."""

        for text in generate(model, prompt, max_new_tokens, temperature, top_p, seed, pm=pm):
            typer.echo(text)
