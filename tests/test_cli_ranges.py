"""Out-of-range numbers are bad input too: every numeric ``cpt`` option that was taken
silently (or refused only after the work, or with a traceback) has its range declared
(a one-line usage error, exit status 2), and the library functions behind them refuse
the same values with a one-line :class:`ConfigError`. Also two of the same kind: a pad id
of 0 is a real id in ``cpt generate``, and ``stages: []`` is not a one-stage run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cptcore.cli.app import run
from cptcore.errors import ConfigError

DATA = Path(__file__).resolve().parent / "data"
ADVISE = ["tokenizer", "advise", "--base", "nope", "--corpus", "a=nope.jsonl"]
TRAIN_SP = ["tokenizer", "train", "--input", "nope.txt", "--vocab-size", "60", "--out", "nope-out"]
CLEAN = ["clean", "--input", "nope.jsonl", "--out", "nope-out"]
TRAIN = ["train", "--model", "nope", "--out", "nope-out"]


@pytest.mark.parametrize("args, flag", [
    # old: taken as 0 (measured on the training text)
    ([*ADVISE, "--heldout-every", "-3"], "--heldout-every"),
    # old: SentencePiece's C++ check after the corpora were read and the base measured
    ([*ADVISE, "--threads", "0"], "--threads"),
    ([*TRAIN_SP, "--threads", "-2"], "--threads"),
    # old: a ValueError traceback from SentencePiece
    ([*TRAIN_SP, "--input-sentence-size", "-5"], "--input-sentence-size"),
    ([*ADVISE, "--input-sentence-size", "-5"], "--input-sentence-size"),
    # old: every line skipped, refused after reading the whole corpus
    ([*TRAIN_SP, "--max-sentence-length", "0"], "--max-sentence-length"),
    ([*ADVISE, "--max-sentence-length", "0"], "--max-sentence-length"),
    # old: a traceback from SentencePiece (unsigned 32-bit), numpy (after --out was
    # replaced) or the Trainer's np.random.seed
    ([*TRAIN_SP, "--seed", "-1"], "--seed"),
    ([*ADVISE, "--seed", "-1"], "--seed"),
    (["prepare", "pretrain", "--tokenizer", "nope", "--input", "nope.jsonl", "--out", "o", "--seed", "-1"], "--seed"),
    (["prepare", "sft", "--tokenizer", "nope", "--input", "nope.jsonl", "--out", "o", "--seed", "-1"], "--seed"),
    ([*TRAIN, "--seed", "-1"], "--seed"),
    # old: refused (traceback-free) only by NEFTune inside cpt train, minutes in
    (["quickstart", "--neftune-alpha", "-1"], "--neftune-alpha"),
    # old: shown as 'before' (a perplexity is exp(loss) >= 1)
    (["report", "nope", "--baseline-perplexity", "0.5"], "--baseline-perplexity"),
    # old: --nnodes 0 ran as one process, --dry-run planned --nproc-per-node 0 as 1 rank,
    # port 0 silently became a free port, 70000 reached torchrun after the run's checks
    ([*TRAIN, "--nnodes", "0"], "--nnodes"),
    ([*TRAIN, "--nproc-per-node", "0", "--dry-run"], "--nproc-per-node"),
    ([*TRAIN, "--nproc-per-node", "1", "--master-port", "70000"], "--master-port"),
    ([*TRAIN, "--nproc-per-node", "1", "--master-port", "0"], "--master-port"),
])
def test_out_of_range_number_is_a_one_line_usage_error(args, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: Invalid value for '{flag}': Input should be "), err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("args, message", [
    # old: SentencePiece's C++ spec check, after the corpora were read (and the base measured)
    ([*TRAIN_SP, "--character-coverage", "1.5"], "--character-coverage must be in [0.98, 1.0] (SentencePiece's range), got 1.5"),
    ([*ADVISE, "--character-coverage", "0.5"], "--character-coverage must be in [0.98, 1.0] (SentencePiece's range), got 0.5"),
    ([*TRAIN_SP, "--threads", "2000"], "--threads must be in [1, 1024], got 2000"),
    # old: a TypeError traceback from SentencePiece's seed
    ([*TRAIN_SP, "--seed", str(2**32)], "--seed must be in [0, 4294967295]"),
    # old: accepted silently (always the largest size / never expand)
    ([*ADVISE, "--knee-gain", "-1"], "knee_gain (--knee-gain) must be in [0, 1] (a relative fall of tokens/char), got -1.0"),
    ([*ADVISE, "--knee-gain", "1.5"], "knee_gain (--knee-gain) must be in [0, 1]"),
    # old: silently 1-byte shards (one document each) / a traceback / no examples
    ([*CLEAN, "--shard-mb", "-1"], "--shard-mb must be > 0 (shard_bytes -1048576 < 1 byte)"),
    ([*CLEAN, "--shard-mb", "0"], "--shard-mb must be > 0 (shard_bytes 0 < 1 byte)"),
    ([*CLEAN, "--in-flight-mb", "0"], "--in-flight-mb must be > 0 (in_flight_bytes 0 < 1 byte)"),
    ([*CLEAN, "--examples", "-1"], "--examples must be >= 0, got -1"),
])
def test_out_of_range_number_checked_by_the_library_is_one_line_before_any_work(args, message, capsys, tmp_path,
                                                                               monkeypatch):
    """Checked by the library, not as a click range: in these commands the range column
    made the 80-column ``--help`` cut words (JSONL/JSON/Parq…)."""
    monkeypatch.chdir(tmp_path)
    assert run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}"), err
    assert err.count("\n") == 2 and not any(tmp_path.iterdir())  # the error and the CPT_DEBUG hint


def test_library_functions_refuse_the_same_values(tmp_path):
    from cptcore.tokenizer.advise import advise
    from cptcore.tokenizer.train import TrainOptions, train_sentencepiece

    corpus = [("a", tmp_path / "missing.jsonl")]  # refused before any file is read
    with pytest.raises(ConfigError, match=r"^knee_gain \(--knee-gain\) must be in \[0, 1\] .*got -0.5$"):
        advise("nope", corpus, knee_gain=-0.5)
    with pytest.raises(ConfigError, match=r"^knee_gain .*got nan$"):
        advise("nope", corpus, knee_gain=float("nan"))
    with pytest.raises(ConfigError, match=r"^heldout_every \(--heldout-every\) must be 0 .* or >= 2, got -3$"):
        advise("nope", corpus, heldout_every=-3)
    # 1 measured every document and trained on none ("no text to train on (every file is empty)")
    with pytest.raises(ConfigError, match=r"got 1 \(1 would measure every document and train on none\)$"):
        advise("nope", corpus, heldout_every=1)
    with pytest.raises(ConfigError, match=r"^--threads must be in \[1, 1024\], got 0$"):
        advise("nope", corpus, train_options=TrainOptions(num_threads=0))
    text = tmp_path / "t.txt"
    text.write_text("alpha beta\n", encoding="utf-8")
    for opts, message in [
        (TrainOptions(character_coverage=0.5), r"^--character-coverage must be in \[0.98, 1.0\] .*got 0.5$"),
        (TrainOptions(input_sentence_size=-5), r"^--input-sentence-size must be >= 0 \(0: all lines\), got -5$"),
        (TrainOptions(max_sentence_length=0), r"^--max-sentence-length must be >= 1 byte, got 0$"),
        (TrainOptions(seed=-1), r"^--seed must be in \[0, 4294967295\] .*got -1$"),
        (TrainOptions(num_threads=2000), r"^--threads must be in \[1, 1024\], got 2000$"),
        (TrainOptions(seed=2**32), r"^--seed must be in \[0, 4294967295\] .*got 4294967296$"),
    ]:
        with pytest.raises(ConfigError, match=message):
            train_sentencepiece([text], tmp_path / "sp", opts)
        assert not (tmp_path / "sp").exists()


def test_clean_shard_mb_zero_and_quickstart_lr_are_refused_first(tmp_path):
    from cptcore.clean.pipeline import CleanArgs, clean
    from cptcore.plugins import make_plugin_manager
    from cptcore.quickstart import QuickstartOptions, run_quickstart

    pm = make_plugin_manager(entrypoints=False)
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hello"}\n', encoding="utf-8")
    # old: max(1, ...) made --shard-mb 0 a 1-byte shard bound
    with pytest.raises(ConfigError, match=r"^--shard-mb must be > 0 \(shard_bytes 0 < 1 byte\)$"):
        clean(pm, CleanArgs(inputs=(str(src),), out=str(tmp_path / "c"), shard_bytes=0))
    with pytest.raises(ConfigError, match=r"^--examples must be >= 0, got -1$"):
        clean(pm, CleanArgs(inputs=(str(src),), out=str(tmp_path / "c"), examples=-1))
    assert not (tmp_path / "c").exists()
    # old: refused by cpt train's optimizer check, after prepare and the baseline evaluation
    for lr in (0.0, -1e-3, float("inf")):
        with pytest.raises(ConfigError, match=r"^quickstart: --lr must be a positive finite number"):
            run_quickstart(QuickstartOptions(out=tmp_path / "q", lr=lr), pm)
    with pytest.raises(ConfigError, match=r"^quickstart: --neftune-alpha must be a finite number >= 0, got -1"):
        run_quickstart(QuickstartOptions(out=tmp_path / "q", neftune_alpha=-1.0), pm)
    assert not (tmp_path / "q").exists()


def test_empty_stages_list_is_refused_naming_the_key(tmp_path, cpt_cli):
    from cptcore.config import load_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text("training:\n  max_steps: 2\nstages: []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{cfg}: stages is an empty list \(leave the key out for one stage\)$"):
        load_config(cfg)
    assert load_config(None).stages == []  # absent: one implicit stage, as before
    code, out = cpt_cli("train", "--config", str(cfg), "--dry-run")
    assert code == 1 and f"error: {cfg}: stages is an empty list" in out


def test_generate_passes_a_pad_id_of_0(tmp_path, smollm2_tokenizer_dir, monkeypatch):
    """SmolLM2's <|endoftext|> is id 0; as the pad token (eos <|im_end|>, id 2) it used
    to be replaced by the eos id (``pad_token_id or eos_token_id``)."""
    from transformers import GenerationMixin

    from cptcore.testing import make_tiny_llama
    from cptcore.train.export_cli import generate

    tok = tmp_path / "tok"
    shutil.copytree(smollm2_tokenizer_dir, tok)
    conf = json.loads((tok / "tokenizer_config.json").read_text(encoding="utf-8"))
    conf["pad_token"] = "<|endoftext|>"
    (tok / "tokenizer_config.json").write_text(json.dumps(conf), encoding="utf-8")
    model = make_tiny_llama(tmp_path / "m", tok, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1)
    seen = []
    original = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("pad_token_id"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    out = generate(str(model), ["hello"], max_new_tokens=2)
    assert len(out) == 1 and out[0].startswith("hello")
    assert seen == [0]


def test_torchrun_argv_refuses_a_port_out_of_range():
    from cptcore.train.launch import torchrun_argv

    for port in (0, -1, 65536):  # 0 used to mean "not given" (a free port, or 29500 on several nodes)
        with pytest.raises(ConfigError, match=rf"^--master-port must be in \[1, 65535\], got {port}$"):
            torchrun_argv(["train"], 1, master_port=port)
    assert "--master-port=65535" in torchrun_argv(["train"], 1, master_port=65535)


def test_seeds_out_of_numpy_range_are_refused_by_the_checks(tmp_path, smollm2_tokenizer_dir):
    from cptcore.config import load_config
    from cptcore.data.pipeline import PrepareArgs, prepare
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.plan import check_numbers

    for seed in (-1, 2**32):
        with pytest.raises(ConfigError, match=rf"^training.seed must be in \[0, 4294967295\], got {seed}$"):
            check_numbers(load_config(sets=[f"training.seed={seed}"]))
    check_numbers(load_config(sets=[f"training.seed={2**32 - 1}"]))
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hello"}\n', encoding="utf-8")
    args = PrepareArgs(kind="pretrain", tokenizer=str(smollm2_tokenizer_dir), inputs=(str(src),), out=str(tmp_path / "p"), seed=-1)
    with pytest.raises(ConfigError, match=r"^--seed must be >= 0, got -1$"):
        prepare(make_plugin_manager(entrypoints=False), args)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("args, flag, value", [
    ([*TRAIN, "--lr"], "--lr", "nan"),
    ([*TRAIN, "--epochs"], "--epochs", "inf"),
    ([*TRAIN, "--peak-flops"], "--peak-flops", "nan"),
    (["generate", "nope", "--prompt", "x", "--temperature"], "--temperature", "nan"),
    ([*CLEAN, "--shard-mb"], "--shard-mb", "inf"),
    ([*ADVISE, "--knee-gain"], "--knee-gain", "nan"),
    (["quickstart", "--lr"], "--lr", "-inf"),
])
def test_float_options_refuse_nan_and_infinities(args, flag, value, capsys, tmp_path, monkeypatch):
    """click parses 'nan'/'inf' as floats and its ranges compare False with NaN: every float
    option has the `finite` callback (cptcore/cli/numbers.py)."""
    monkeypatch.chdir(tmp_path)
    assert run([*args, value]) == 2
    err = capsys.readouterr().err
    assert err == f"error: Invalid value for '{flag}': {float(value)} is not a finite number (try 'cpt {args[0]} --help')\n" \
        or (err.count("\n") == 1 and f"'{flag}'" in err and "finite" in err), err
    assert not any(tmp_path.iterdir())


def test_every_float_option_has_the_finite_callback(cpt_pm):
    import typer.main

    from cptcore.cli.app import make_app
    from cptcore.cli.numbers import finite

    def walk(cmd, path):
        for p in cmd.params:
            if "float" in repr(p.type_descriptor).lower():
                yield f"{path} {p.opts[0]}", p
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    found = dict(walk(typer.main.get_command(make_app(cpt_pm)), "cpt"))
    assert {"cpt train --lr", "cpt clean --shard-mb", "cpt tokenizer advise --knee-gain", "cpt model resize --max-kl"} <= set(found)
    def has_finite(p):  # typer wraps the callback; the wrapper closes over it
        return p.callback is finite or finite in [c.cell_contents for c in (p.callback.__closure__ or ())]

    assert [name for name, p in found.items() if p.callback is None or not has_finite(p)] == []
