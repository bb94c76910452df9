"""Benchmark vocabulary expansion and embedding resize on real inputs.

Measures, in one run:

* tokens per character (whole text and CJK runs) before/after expanding Mistral v1 and
  SmolLM2 with a Chinese SentencePiece model trained on the bundled law text, on the
  held-out sample (``cptcore/assets/data/zh_law_heldout.jsonl``);
* the mean initialisation of new embedding rows: cptcore's vectorised ``index_add_``
  (:func:`cptcore.model.resize.mean_rows`) against the seed's recipe, which appends
  rows one by one (``torch.cat`` of the old matrix with each new mean row), on
  SmolLM2's 49152 x 576 embedding (or a random matrix of that shape when SmolLM2 is not
  cached), both on the first ``--baseline-rows`` new rows (the baseline is quadratic);
  prints the ratio baseline / cptcore and checks both give the same rows;
* ``cpt model resize`` end to end (load, resize, save) on SmolLM2 when cached.

Writes ``benchmarks/results/vocab_expansion.json``.

Usage::

    python benchmarks/vocab_expansion.py [--vocab-size 3000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_table, write_result  # noqa: E402


def seed_style_append(weight, plan):
    """Baseline: one mean per new token, appended with torch.cat (the seed's loop)."""
    import torch

    rows: dict[int, list[int]] = {}
    for sub, row in zip(plan.sub_ids, plan.owner):
        rows.setdefault(row, []).append(sub)
    out = weight.detach().clone()
    for row in range(plan.new_size - plan.old_size):
        mean = weight[rows[row]].to(torch.float64).mean(0).to(weight.dtype)
        out = torch.cat([out, mean[None]], dim=0)
    return out[plan.old_size :]


def first_rows(plan, k):
    """The part of ``plan`` that covers its first ``k`` new rows."""
    from cptcore.model.resize import ResizePlan

    keep = [i for i, row in enumerate(plan.owner) if row < k]
    return ResizePlan(plan.old_size, plan.old_size + k, [plan.sub_ids[i] for i in keep], [plan.owner[i] for i in keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab-size", type=int, default=3000)
    parser.add_argument("--baseline-rows", type=int, default=100, help="new rows timed for the per-row baseline")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from cptcore.assets import bundled, cache_dir
    from cptcore.model.resize import mean_rows, plan_mean_init, resize_model_folder
    from cptcore.tokenizer.expand import expand_tokenizer
    from cptcore.tokenizer.train import TrainOptions, train_sentencepiece

    tmp = Path(tempfile.mkdtemp(prefix="cpt_bench_vocab_"))
    t0 = time.perf_counter()
    zh, stats = train_sentencepiece([bundled("zh_law_train.jsonl")], tmp / "zh", TrainOptions(vocab_size=args.vocab_size))
    train_s = time.perf_counter() - t0
    heldout = bundled("zh_law_heldout.jsonl")
    smol_dir = cache_dir() / "smollm2" / "hf"
    smol_tok = smol_dir if (smol_dir / "tokenizer.json").is_file() else ROOT / "tests/data/tokenizers/smollm2"
    results: dict = {"train_seconds": round(train_s, 3), "zh_vocab_size": args.vocab_size, "expand": {}}
    rows = []
    for name, base in (("mistral-v1", ROOT / "tests/data/tokenizers/mistral-v1.model"), ("smollm2", smol_tok)):
        t0 = time.perf_counter()
        report = expand_tokenizer(base, zh, tmp / name, eval_text=heldout)
        seconds = time.perf_counter() - t0
        before, after = report["eval"]["before"], report["eval"]["after"]
        results["expand"][name] = {k: report[k] for k in ("method", "vocab_before", "vocab_after", "added", "intermediate")}
        results["expand"][name].update(seconds=round(seconds, 3), before=before, after=after)
        rows.append([name, report["vocab_before"], report["vocab_after"], before["tokens_per_char"], after["tokens_per_char"],
                     before["tokens_per_cjk_char"], after["tokens_per_cjk_char"], seconds])
    print_table("tokens per character on zh_law_heldout.jsonl",
                ["base", "vocab before", "vocab after", "tok/char before", "after", "tok/CJK char before", "after", "expand s"], rows)

    old_tok = AutoTokenizer.from_pretrained(smol_tok)
    new_tok = AutoTokenizer.from_pretrained(tmp / "smollm2")
    plan = plan_mean_init(old_tok, new_tok)
    if (smol_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file

        weight = load_file(smol_dir / "model.safetensors")["model.embed_tokens.weight"]
    else:
        weight = torch.randn(49152, 576)
    t0 = time.perf_counter()
    mean_rows(weight, plan)
    all_s = time.perf_counter() - t0
    # the baseline is quadratic (every torch.cat copies the whole matrix): time both on
    # the first --baseline-rows new rows (all 3098 took 423 s for the baseline here)
    sub = first_rows(plan, min(args.baseline_rows, plan.new_size - plan.old_size))
    t0 = time.perf_counter()
    fast = mean_rows(weight, sub)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = seed_style_append(weight, sub)
    slow_s = time.perf_counter() - t0
    assert torch.equal(fast, slow), "vectorised and per-row means differ"
    n_sub = sub.new_size - sub.old_size
    results["mean_init"] = {"new_rows_total": plan.new_size - plan.old_size, "cptcore_all_rows_s": round(all_s, 4),
                            "compared_rows": n_sub, "cptcore_s": round(fast_s, 4), "seed_append_s": round(slow_s, 4),
                            "ratio_seed_over_cptcore": round(slow_s / fast_s, 1)}
    print_table(f"mean init of {n_sub} new rows (SmolLM2 embedding 49152 x 576)", ["method", "seconds", "ratio"],
                [["seed: per-row torch.cat", slow_s, slow_s / fast_s], ["cptcore: index_add_", fast_s, 1.0]])
    print(f"cptcore, all {plan.new_size - plan.old_size} new rows: {all_s:.3f} s")

    if (smol_dir / "model.safetensors").is_file():
        t0 = time.perf_counter()
        summary = resize_model_folder(smol_dir, tmp / "smollm2", tmp / "smol_resized")
        results["resize_smollm2"] = {**summary, "total_seconds": round(time.perf_counter() - t0, 2)}
        print(f"cpt model resize SmolLM2 -> {summary['new_rows']} rows: resize {summary['seconds']} s, "
              f"load+resize+save {results['resize_smollm2']['total_seconds']} s")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {write_result('vocab_expansion', results)}")


if __name__ == "__main__":
    main()
