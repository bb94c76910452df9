"""Resuming a run that used ``cpt --plugin FILE`` (issue 12 item 10): the file's path and
sha256 are recorded in ``OUT/config.yaml``; ``--resume`` never imports it from there (a
plugin is code, issue 11), so a resume without ``--plugin FILE`` is refused naming the
flag, and a changed or missing file is refused by name."""

from __future__ import annotations

import yaml

from cptcore.plugins import file_sha256, make_plugin_manager
from train_support import DATA, prepare, tiny_model

# a logger plugin: appends each logged step to $CPT_TEST_STEPS_FILE
RECORDER = '''
import os
from cptcore.hookspecs import hookimpl
from cptcore.specs import LoggerSpec

class _Recorder:
    def log(self, metrics, step):
        with open(os.environ["CPT_TEST_STEPS_FILE"], "a") as f:
            f.write(f"{step}\\n")
    def close(self):
        pass

@hookimpl
def cpt_register_loggers():
    return [LoggerSpec(name="recorder", create=lambda d, c: _Recorder())]
'''


def _train(cpt_cli, pm, model, data, out, steps, *extra):
    return cpt_cli("train", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", str(steps),
                   "--save-every", "1", "--set", "logging.progress=false", "--set", "logging.loggers=[jsonl, recorder]",
                   *extra, pm=pm)


def test_plugin_file_recorded_loaded_on_resume_and_refused_when_changed(cpt_cli, tmp_path, smollm2_tokenizer_dir,
                                                                       monkeypatch):
    small = tmp_path / "small.jsonl"
    small.write_text((DATA / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    model = tiny_model(tmp_path / "model", smollm2_tokenizer_dir)
    data = prepare(tmp_path / "data", smollm2_tokenizer_dir, [str(small)], max_length=64)
    plugin = tmp_path / "recorder.py"
    plugin.write_text(RECORDER, encoding="utf-8")
    steps = tmp_path / "steps.txt"
    monkeypatch.setenv("CPT_TEST_STEPS_FILE", str(steps))
    out = tmp_path / "out"

    code, output = _train(cpt_cli, make_plugin_manager(entrypoints=False, files=[plugin]), model, data, out, 2)
    assert code == 0, output
    recorded = yaml.safe_load((out / "config.yaml").read_text())["plugins"]["files"]
    assert recorded == [{"path": str(plugin.resolve()), "sha256": file_sha256(plugin)}]
    assert yaml.safe_load((out / "checkpoints" / "step-2" / "config.yaml").read_text())["plugins"]["files"] == recorded
    assert steps.read_text().split() == ["1", "2"]

    # resume without --plugin: refused, naming the file and the flag; nothing imported
    code, output = _train(cpt_cli, make_plugin_manager(entrypoints=False), model, data, out, 3, "--resume", "auto")
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1, output
    assert f"this run used plugin file {plugin.resolve()}" in errors[0] and f"--plugin {plugin.resolve()}" in errors[0]
    assert steps.read_text().split() == ["1", "2"]
    # with --plugin again it resumes
    code, output = _train(cpt_cli, make_plugin_manager(entrypoints=False, files=[plugin]), model, data, out, 3,
                          "--resume", "auto")
    assert code == 0, output
    assert steps.read_text().split() == ["1", "2", "3"]
    assert yaml.safe_load((out / "config.yaml").read_text())["plugins"]["files"] == recorded

    # a changed file given again with --plugin is refused by name
    plugin.write_text(RECORDER + "\n# edited\n", encoding="utf-8")
    code, output = _train(cpt_cli, make_plugin_manager(entrypoints=False, files=[plugin]), model, data, out, 4,
                          "--resume", "auto")
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1, output
    assert f"plugin file {plugin.resolve()} changed since the run recorded it" in errors[0]
    assert "step-3/config.yaml" in errors[0]
    assert steps.read_text().split() == ["1", "2", "3"]

    # deleted: resuming without it names the file it needs
    plugin.unlink()
    code, output = _train(cpt_cli, make_plugin_manager(entrypoints=False), model, data, out, 4, "--resume", "auto")
    assert code == 1 and f"this run used plugin file {plugin.resolve()}" in output
