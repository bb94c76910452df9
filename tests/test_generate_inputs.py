"""``cpt generate`` (issue 12 item 2): only the tokenizer outputs the model's forward
takes are passed to ``generate`` (a ``PreTrainedTokenizerFast`` folder returns
``token_type_ids``, which crashed it), and a checkpoint folder ``OUT/checkpoints/step-N``
is accepted directly, its weights loaded without executing anything."""

from __future__ import annotations

import json
import shutil

import pytest

from cptcore.errors import CptError
from train_support import DATA, prepare, run_config, tiny_model


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2_tokenizer_dir):
    """A 2-step tiny run with a checkpoint at step 2 and its export in OUT/final."""
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.loop import train

    root = tmp_path_factory.mktemp("gen")
    small = root / "small.jsonl"
    small.write_text("\n".join((DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[:3]) + "\n",
                     encoding="utf-8")
    model = tiny_model(root / "model", smollm2_tokenizer_dir)
    data = prepare(root / "data", smollm2_tokenizer_dir, [str(small)], max_length=64)
    out = root / "out"
    train(run_config(out, model, [str(data)], training__max_steps=2, optimizer__lr=5e-2), make_plugin_manager(entrypoints=False))
    return {"model": model, "out": out, "ckpt": out / "checkpoints" / "step-2"}


def test_forward_inputs_drop_what_the_forward_does_not_name(run):
    from transformers import AutoModelForCausalLM

    from cptcore.train.export_cli import forward_inputs

    model = AutoModelForCausalLM.from_pretrained(str(run["model"]))
    enc = {"input_ids": 1, "attention_mask": 2, "token_type_ids": 3}
    assert forward_inputs(model, enc) == {"input_ids": 1, "attention_mask": 2}


def test_tokenizer_returning_token_type_ids(run, tmp_path):
    from transformers import AutoTokenizer

    from cptcore.train.export_cli import generate

    folder = tmp_path / "ptf"
    shutil.copytree(run["model"], folder)
    cfg_file = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # its default model_input_names include token_type_ids
    cfg.pop("model_input_names", None)
    cfg_file.write_text(json.dumps(cfg))
    assert "token_type_ids" in AutoTokenizer.from_pretrained(str(folder))("床前明月光", return_tensors="pt")
    assert generate(str(folder), ["床前明月光"], max_new_tokens=5) == generate(str(run["model"]), ["床前明月光"], max_new_tokens=5)


def test_checkpoint_folder_generates_what_its_export_generates(run, cpt_cli):
    from cptcore.train.export_cli import generate

    prompts = ["床前明月光", "hello"]
    from_ckpt = generate(str(run["ckpt"]), prompts, max_new_tokens=6)
    assert from_ckpt == generate(str(run["out"] / "final"), prompts, max_new_tokens=6)
    assert from_ckpt != generate(str(run["model"]), prompts, max_new_tokens=6)  # trained weights, not the base
    code, output = cpt_cli("generate", str(run["ckpt"]), "--prompt", prompts[0], "--max-new-tokens", "6")
    assert code == 0, output
    assert output.strip().splitlines()[-1] == from_ckpt[0]


def test_incomplete_checkpoint_folder_is_one_line(run, tmp_path):
    from cptcore.train.export_cli import generate

    bad = tmp_path / "step-2"
    shutil.copytree(run["ckpt"], bad)
    (bad / "trainer_state.json").unlink()
    with pytest.raises(CptError, match=r"incomplete checkpoint \(no trainer_state.json"):
        generate(str(bad), ["hi"], max_new_tokens=2)
