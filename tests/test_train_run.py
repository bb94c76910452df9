"""In-process training runs on a tiny random LLaMA (SmolLM2 tokenizer) with data made by
the data pipeline: outputs, resume, accumulation weighting, LoRA, freeze, gradient
checkpointing, export, generate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cptcore.hookspecs import hookimpl
from cptcore.plugins import make_plugin_manager
from cptcore.specs import LoggerSpec

from train_support import DATA, prepare, run_config, tiny_model


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_tokenizer_dir):
    root = tmp_path_factory.mktemp("train_env")
    tok = smollm2_tokenizer_dir
    small = root / "small.jsonl"
    lines = (DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[:2]  # 10 rows of 64 tokens
    small.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        "root": root,
        "model": tiny_model(root / "model", tok),
        "train": prepare(root / "train", tok, [str(small)], max_length=64),
        "eval": prepare(root / "eval", tok, [str(DATA / "en_python_docs_sample.jsonl")], max_length=64),
        "sft": prepare(root / "sft", tok, [str(DATA / "sft_en_chatterbot_sample.jsonl")], max_length=64,
                       kind="sft", packer=None),
    }


def _pm(*extra):
    return make_plugin_manager(entrypoints=False, extra=extra)


def _train(cfg, *extra):
    from cptcore.train.loop import train

    return train(cfg, _pm(*extra))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def test_run_outputs_layout_metrics_and_export(env, tmp_path):
    out = tmp_path / "run"
    cfg = run_config(out, env["model"], [str(env["train"])], [str(env["eval"])],
                     training__eval_every=2, training__eval_batches=2, checkpointing__save_every=2,
                     checkpointing__keep_last=1, training__peak_flops=1e9)
    summary = _train(cfg)
    assert (out / "config.yaml").is_file() and any((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-4"]  # keep_last=1
    base, *rows = _metrics(out)
    assert base["step"] == 0 and base["tokens_seen"] == 0 and "eval_loss" in base  # the step-0 baseline
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"step", "time", "loss", "lr", "grad_norm", "tokens_per_second", "tokens_seen", "peak_memory_mb"} <= set(r)
    assert "eval_loss" in rows[1] and "eval_loss" not in rows[2] and "eval_perplexity" in rows[3]
    assert rows[3]["eval_perplexity"] == pytest.approx(math.exp(rows[3]["eval_loss"]), rel=1e-12)
    # 8 rows of 64 slots; the data's last row is partly padding and pads are not counted
    assert 7 * 64 < rows[-1]["tokens_seen"] <= 8 * 64
    s = json.loads((out / "summary.json").read_text())
    assert s == json.loads(json.dumps(summary))
    assert s["tokens_trained"] == rows[-1]["tokens_seen"] and s["final_eval_loss"] == rows[3]["eval_loss"]
    # throughput: training steps only vs the whole run (eval, checkpoints, export included)
    assert 0 < s["step_time_s"] <= s["train_time_s"] <= s["wall_time_s"]
    assert s["tokens_per_second"] == pytest.approx(s["tokens_this_run"] / s["step_time_s"], rel=0.05)
    assert s["wall_tokens_per_second"] == pytest.approx(s["tokens_this_run"] / s["wall_time_s"], rel=0.05)
    assert s["tokens_per_second"] > s["wall_tokens_per_second"] > 0
    from transformers import AutoModelForCausalLM

    from cptcore.train.mfu import count_n

    # MFU over the stated peak (1e9 FLOP/s, one device): model FLOPs of the step's tokens / time / peak
    n = count_n(AutoModelForCausalLM.from_pretrained(env["model"]))
    for prev, r in zip([{"tokens_seen": 0}] + rows, rows):
        tokens = r["tokens_seen"] - prev["tokens_seen"]
        assert 6 * n * tokens < r["model_flops"] < 6.5 * n * tokens  # + attention over documents of <= 64 tokens
        assert r["mfu"] == pytest.approx(r["model_flops"] * r["tokens_per_second"] / tokens / 1e9, rel=1e-9)
        assert r["hfu"] == r["mfu"]  # no gradient checkpointing: no recompute
    assert s["mfu"] == pytest.approx(sum(r["model_flops"] for r in rows) / s["step_time_s"] / 1e9, rel=0.05)
    # OUT/final: HF folder with identical logits to the last checkpoint's weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptcore.train.export import load_checkpoint_weights

    final = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    ref = AutoModelForCausalLM.from_pretrained(env["model"])
    load_checkpoint_weights(ref, out / "checkpoints" / "step-4")
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        assert torch.equal(final(input_ids=ids).logits, ref.eval()(input_ids=ids).logits)
    assert AutoTokenizer.from_pretrained(out / "final").get_vocab() == AutoTokenizer.from_pretrained(env["model"]).get_vocab()
    assert (out / "final" / "generation_config.json").is_file()


class _Crash:
    """A logger plugin that raises at a given step, standing in for a crash."""

    def __init__(self, at: int):
        self.at = at

    @hookimpl
    def cpt_register_loggers(self):
        at = self.at

        class L:
            def log(self, metrics, step):
                if step == at:
                    raise RuntimeError("simulated crash")

            def close(self):
                pass

        return [LoggerSpec(name="crash", create=lambda d, c: L())]


def test_resume_matches_uninterrupted_run(env, tmp_path):
    """Resume gives the same losses, LRs, epochs and bit-identical weights; also covers the
    anchors' faults: wrong skip, skip repeated next epoch, scheduler not restored, and an
    epoch end reported mid-epoch after a resume."""
    common = dict(training__max_steps=8, training__accumulation_steps=2, checkpointing__save_every=3, checkpointing__keep_last=0,
                  schedule__warmup_steps=2, noise__name="neftune")
    ref_out, cut_out = tmp_path / "ref", tmp_path / "cut"
    _train(run_config(ref_out, env["model"], [str(env["train"])], **common))
    crash = _Crash(at=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(run_config(cut_out, env["model"], [str(env["train"])], logging__loggers=["jsonl", "crash"], **common), crash)
    assert sorted(p.name for p in (cut_out / "checkpoints").iterdir()) == ["step-3"]
    _train(run_config(cut_out, env["model"], [str(env["train"])], checkpointing__resume="auto", **common))
    ref, got = _metrics(ref_out), _metrics(cut_out)
    assert [r["step"] for r in got] == list(range(1, 9))
    for key in ("loss", "lr", "grad_norm", "tokens_seen", "epoch"):
        assert [r[key] for r in got] == [r[key] for r in ref], key
    assert [r.get("epoch_end") for r in got] == [r.get("epoch_end") for r in ref]
    # 5 micro-batches per epoch, 2 per step: epochs end during steps 3, 5 and 8
    assert [r["step"] for r in ref if r.get("epoch_end")] == [3, 5, 8]
    a, b = _weights(ref_out / "final"), _weights(cut_out / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_accumulation_is_token_weighted(env, tmp_path):
    """Fault of the anchors: accumulation weighting by micro-batch. Two micro-batches of
    one row equal one micro-batch of two rows (same rows, unequal label counts)."""
    outs = {}
    for name, mbs, acc in (("joint", 2, 1), ("accum", 1, 2)):
        out = tmp_path / name
        _train(run_config(out, env["model"], [str(env["sft"])], training__micro_batch_size=mbs,
                          training__accumulation_steps=acc, training__max_steps=2, optimizer__grad_clip=0.0))
        outs[name] = _metrics(out)
    for a, b in zip(outs["joint"], outs["accum"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_accumulation_gradient_equals_global_token_mean(env):
    """Strategy level: grads after forward_backward over two micro-batches with the loop's
    normaliser equal the gradient of sum(token losses)/N; the mean of means differs."""
    from transformers import AutoModelForCausalLM

    from cptcore.builtin_plugins.strategy_ddp import build_ddp
    from cptcore.config import RunConfig
    from cptcore.train.launch import init_distributed
    from cptcore.train.strategy import count_label_tokens, token_loss_sum

    import torch.distributed as dist

    init_distributed(0)
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(env["model"])
        s = build_ddp(None, RunConfig())
        s.setup()
        opt = s.make_optimizer([{"params": list(model.parameters()), "weight_decay": 0.0}], RunConfig().optimizer)
        boosted, opt, _, _ = s.boost(model, opt)
        ids = torch.randint(0, 500, (2, 12))
        b1 = {"input_ids": ids[:1], "position_ids": torch.arange(12)[None], "labels": ids[:1].clone()}
        lab2 = ids[1:].clone()
        lab2[:, :9] = -100  # 2 label tokens vs 11
        b2 = {"input_ids": ids[1:], "position_ids": torch.arange(12)[None], "labels": lab2}
        n = count_label_tokens(b1["labels"]) + count_label_tokens(b2["labels"])
        def loss_fn(logits, b):
            return token_loss_sum(logits, b["labels"]), count_label_tokens(b["labels"])

        s.forward_backward(boosted, opt, b1, loss_fn, 1 / n, sync=False)
        s.forward_backward(boosted, opt, b2, loss_fn, 1 / n, sync=True)
        got = [p.grad.clone() for p in model.parameters()]
        opt.zero_grad()
        ref_model = AutoModelForCausalLM.from_pretrained(env["model"])
        joint = token_loss_sum(ref_model(input_ids=ids, position_ids=torch.arange(12).expand(2, 12)).logits,
                               torch.cat([b1["labels"], lab2])) / n
        joint.backward()
        for g, p in zip(got, ref_model.parameters()):
            torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-4)
        ref_model.zero_grad()
        l1 = token_loss_sum(ref_model(input_ids=ids[:1]).logits, b1["labels"]) / count_label_tokens(b1["labels"])
        l2 = token_loss_sum(ref_model(input_ids=ids[1:]).logits, lab2) / count_label_tokens(lab2)
        ((l1 + l2) / 2).backward()
        emb = next(ref_model.parameters())
        assert not torch.allclose(got[0], emb.grad, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_gradient_checkpointing_stays_on_after_eval(env, tmp_path):
    """Fault of the anchors: checkpointing silently off because the model stayed in eval
    mode. Every training step after an evaluation runs the checkpointed layers."""
    calls = []

    class Spy:
        @hookimpl(wrapper=True)
        def cpt_build_model(self, config):
            model = yield
            inner = model.model._gradient_checkpointing_func

            def counting(*a, **k):
                calls.append(model.training)
                return inner(*a, **k)

            model.model._gradient_checkpointing_func = counting
            return model

    out = tmp_path / "gc"
    _train(run_config(out, env["model"], [str(env["train"])], [str(env["eval"])], model__gradient_checkpointing=True,
                      training__eval_every=1, training__eval_batches=1, training__max_steps=3), Spy())
    assert len(calls) == 3 * 2 and all(calls)  # 2 layers x 3 steps, all in train mode


def test_freeze_non_embeddings_trains_only_embeddings(env, tmp_path):
    out = tmp_path / "freeze"
    _train(run_config(out, env["model"], [str(env["train"])], training__freeze="non-embeddings", training__max_steps=2))
    before, after = _weights(env["model"]), _weights(out / "final")
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["model.embed_tokens.weight"]  # tied with lm_head


def test_lora_adapter_peft_loadable_and_export(env, tmp_path, cpt_cli):
    """Fault of the anchors: LoRA checkpoints that peft cannot load."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    _train(run_config(out, env["model"], [str(env["train"])], lora__enabled=True, lora__r=4, lora__dropout=0.0,
                      training__max_steps=2, checkpointing__save_every=1, optimizer__lr=1e-2))
    ck = out / "checkpoints" / "step-2"
    base = AutoModelForCausalLM.from_pretrained(env["model"])
    peft_model = PeftModel.from_pretrained(base, ck / "adapter").eval()
    final = AutoModelForCausalLM.from_pretrained(out / "final").eval()  # merged by default
    ids = torch.arange(5, 30)[None]
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(env["model"]).eval()(input_ids=ids).logits
        torch.testing.assert_close(final(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, plain, atol=1e-4)  # the adapter learned something
    code, output = cpt_cli("export", str(ck), "--out", str(tmp_path / "adapter_only"))
    assert code == 0, output
    assert (tmp_path / "adapter_only" / "adapter_config.json").is_file()
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(env["model"]), tmp_path / "adapter_only").eval()
    code, output = cpt_cli("export", str(ck), "--out", str(tmp_path / "merged"), "--merge-lora")
    assert code == 0, output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
    # resuming a LoRA run from step 1 reproduces step 2 exactly
    res = tmp_path / "lora_resumed"
    _train(run_config(res, env["model"], [str(env["train"])], lora__enabled=True, lora__r=4, lora__dropout=0.0,
                      training__max_steps=2, checkpointing__save_every=1, optimizer__lr=1e-2,
                      checkpointing__resume=str(out / "checkpoints" / "step-1")))
    a, b = _weights(out / "final"), _weights(res / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_train_export_generate(env, tmp_path, cpt_cli):
    out = tmp_path / "cli"
    code, output = cpt_cli("train", "--model", str(env["model"]), "--data", f"{env['train']}:1.0", "--out", str(out),
                           "--max-steps", "2", "--micro-batch-size", "2", "--accumulation-steps", "1", "--lr", "1e-3",
                           "--seed", "7", "--save-every", "1", "--eval-every", "1", "--eval-data", str(env["eval"]),
                           "--noise", "neftune", "--strategy", "ddp", "--set", "logging.progress=false",
                           "--set", "training.eval_batches=1")
    assert code == 0, output
    assert "trained 2 steps" in output
    code, output = cpt_cli("export", str(out / "checkpoints" / "step-2"), "--out", str(tmp_path / "exp"))
    assert code == 0, output
    a, b = _weights(out / "final"), _weights(tmp_path / "exp")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    code, output = cpt_cli("generate", str(out / "final"), "--prompt", "床前明月光", "--max-new-tokens", "4")
    assert code == 0, output
    assert output.startswith("床前明月光")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_checkpoints(env, tmp_path, precision):
    """bf16 autocast; fp16 autocast with dynamic loss scaling (scaler state checkpointed)."""
    out = tmp_path / precision
    _train(run_config(out, env["model"], [str(env["train"])], strategy__precision=precision, training__max_steps=2))
    rows = _metrics(out)
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert (out / "checkpoints" / "step-2" / "grad_scaler.pt").is_file() == (precision == "fp16")
