"""``cpt prepare pretrain`` and ``cpt prepare sft``."""

from __future__ import annotations

import shlex
import sys
from typing import Any, List, Optional

import typer

from ..config import parse_set
from ..errors import ConfigError
from ..data.pipeline import PrepareArgs, prepare
from ..data.stats import print_summary


def _options(items: list[str] | None, section: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The ``--set SECTION.KEY=VALUE`` items of one section (values read as YAML).

    Raises:
        ConfigError: an item names a section this command does not take.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, value = parse_set(item)
        head, _, rest = key.partition(".")
        if head not in allowed:
            raise ConfigError(f"--set {item}: this command takes {' or '.join(a + '.KEY=VALUE' for a in allowed)}")
        if head == section:
            out[rest] = value
    return out


def _command() -> str:
    return shlex.join(["cpt", *sys.argv[1:]])


TOKENIZER = typer.Option(..., "--tokenizer", help="Hugging Face tokenizer folder (fast tokenizer.json preferred).")
INPUT = typer.Option(..., "--input", help="PATH[:WEIGHT] file, folder or glob (repeatable); weights set token proportions.")
OUT = typer.Option(..., "--out", help="Output folder (datasets Arrow shards + manifest.json).")
NUM_PROC = typer.Option(1, "--num-proc", help="Tokenizer worker processes (1: in-process, the Rust tokenizer uses its own threads).")
NUM_SHARDS = typer.Option(1, "--num-shards", help="Arrow shards written.")
ON_ERROR = typer.Option("stop", "--on-error", help="stop (one line naming file:line) | skip (skip and count by reason).")
SET = typer.Option(None, "--set", help="packer.KEY=VALUE or template.KEY=VALUE option (repeatable).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder.")
SEED = typer.Option(0, "--seed", metavar="<int>", min=0, help="Seed of the row shuffle (identical inputs + seed = identical shards).")
SHUFFLE = typer.Option(0, "--shuffle-window", help="Shuffle rows in windows of N rows (0: keep input order).")
SFT_SETS = ("packer", "template")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show the progress bar.")
EXECUTOR = typer.Option("local", "--executor", help="Where chunks are tokenized (cpt executors): local (this machine, --num-proc processes) | ray (Ray tasks; same rows).")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="With --executor ray: address of a running cluster (ray start --head); default: start a local one.")


def make_prepare_app(pm: Any) -> typer.Typer:
    sub = typer.Typer(help="Turn raw text and conversations into training-ready Arrow shards.", no_args_is_help=True)

    @sub.command("pretrain")
    def pretrain(
        tokenizer: str = TOKENIZER,
        input: List[str] = INPUT,
        out: str = OUT,
        max_length: int = typer.Option(2048, "--max-length", help="Tokens per row."),
        packer: str = typer.Option("splice", "--packer", help="Packer (cpt packers): splice | greedy | bfd | plugins."),
        text_field: str = typer.Option("text", "--text-field", help="JSON/Parquet field holding the text."),
        long_doc: str = typer.Option("split", "--long-doc", help="Documents over max_length: split | truncate | skip."),
        add_bos: Optional[bool] = typer.Option(None, "--add-bos/--no-add-bos", help="Force BOS on/off (default: the tokenizer's convention)."),
        add_eos: Optional[bool] = typer.Option(None, "--add-eos/--no-add-eos", help="Force EOS on/off (default: on when the tokenizer has one)."),
        mix: str = typer.Option("downsample", "--mix", help="With weights, when an input runs out: downsample (stop) | upsample (repeat it)."),
        num_proc: int = NUM_PROC,
        num_shards: int = NUM_SHARDS,
        on_error: str = ON_ERROR,
        seed: int = SEED,
        shuffle_window: int = SHUFFLE,
        set_: Optional[List[str]] = SET,
        overwrite: bool = OVERWRITE,
        progress: bool = PROGRESS,
        executor: str = EXECUTOR,
        ray_address: Optional[str] = RAY_ADDRESS,
    ) -> None:
        """Tokenize documents and pack them into rows of --max-length tokens."""

        args = PrepareArgs(
            kind="pretrain", tokenizer=tokenizer, inputs=tuple(input), out=out, max_length=max_length,
            packer=packer, packer_options=_options(set_, "packer", ("packer",)), text_field=text_field, num_proc=num_proc,
            num_shards=num_shards, on_error=on_error, long_doc=long_doc, add_bos=add_bos, add_eos=add_eos,
            mix=mix, seed=seed, shuffle_window=shuffle_window, overwrite=overwrite, command=_command(),
            progress=progress, executor=executor, ray_address=ray_address,
        )
        print_summary(prepare(pm, args), out)

    @sub.command("sft")
    def sft(
        tokenizer: str = TOKENIZER,
        input: List[str] = INPUT,
        out: str = OUT,
        max_length: int = typer.Option(2048, "--max-length", help="Most tokens per conversation (cut at turn boundaries)."),
        template: str = typer.Option("chatml", "--template", help="Chat template (cpt templates): chatml | llama3 | llama2 | colossal | tokenizer."),
        packer: Optional[str] = typer.Option(None, "--packer", help="Pack conversations (e.g. bfd); default: one row per conversation."),
        mix: str = typer.Option("downsample", "--mix", help="With weights, when an input runs out: downsample | upsample."),
        num_proc: int = NUM_PROC,
        num_shards: int = NUM_SHARDS,
        on_error: str = ON_ERROR,
        seed: int = SEED,
        shuffle_window: int = SHUFFLE,
        set_: Optional[List[str]] = SET,
        overwrite: bool = OVERWRITE,
        progress: bool = PROGRESS,
        executor: str = EXECUTOR,
        ray_address: Optional[str] = RAY_ADDRESS,
    ) -> None:
        """Render conversations with a chat template; loss on assistant turns only."""

        args = PrepareArgs(
            kind="sft", tokenizer=tokenizer, inputs=tuple(input), out=out, max_length=max_length,
            packer=packer, packer_options=_options(set_, "packer", SFT_SETS), template=template,
            template_options=_options(set_, "template", SFT_SETS), num_proc=num_proc, num_shards=num_shards,
            on_error=on_error, mix=mix, seed=seed, shuffle_window=shuffle_window, overwrite=overwrite,
            command=_command(), progress=progress, executor=executor, ray_address=ray_address,
        )
        print_summary(prepare(pm, args), out)

    return sub
