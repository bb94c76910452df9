"""``cpt clean`` / ``cpt prepare`` at the edges: a killed run resumes and ends with the
same bytes; the Ray executor writes the same shards as the local one; memory stays flat
as the input grows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clean_support import eval_file, planted_corpus

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

KILLER = '''
import os, signal
from pathlib import Path
from cptcore.hookspecs import hookimpl
from cptcore.specs import FilterSpec

class Killer:
    """Keeps every document; SIGKILLs the process at the Nth document it sees, once."""
    def __init__(self):
        self.seen = 0
    def check(self, text):
        self.seen += 1
        flag = Path(os.environ["CPT_TEST_KILL_FLAG"])
        if self.seen == int(os.environ["CPT_TEST_KILL_AT"]) and not flag.exists():
            flag.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return None

@hookimpl
def cpt_register_filters():
    return [FilterSpec(name="killer", make=lambda options, context: Killer())]
'''


NO_FIRST = '''
from cptcore.hookspecs import hookimpl
from cptcore.specs import FilterSpec

class NoFirst:
    """A class defined in a plugin file: Ray workers cannot import its module."""
    def check(self, text):
        return "mentions article one" if "第一条" in text else None

@hookimpl
def cpt_register_filters():
    return [FilterSpec(name="no_first", make=lambda options, context: NoFirst())]
'''


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _comparable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("seconds", "command", "shards_resumed")}


def test_killed_clean_resumes_where_it_stopped_with_identical_output(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    planted_corpus(corpus)
    evalf = eval_file(tmp_path / "eval.jsonl")
    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER)
    flag = tmp_path / "flag"
    env = {**os.environ, "CPT_TEST_KILL_FLAG": str(flag), "CPT_TEST_KILL_AT": "400"}

    def run(out: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "cptcore.cli.main", "--plugin", str(plugin), "clean", "--input", str(corpus),
               "--out", str(out), "--filter", "killer", "--filter", "quality", "--filter", "exact", "--filter", "near",
               "--language", "zh", "--decontaminate", f"heldout={evalf}", "--shard-docs", "50", "--no-progress"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    flag.write_text("reference run: no kill")
    ref = run(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    flag.unlink()
    killed = run(tmp_path / "out")
    assert killed.returncode == -9, killed.stderr
    done_before = len(list((tmp_path / "out" / "state").glob("part-*.json")))
    total = len(list((tmp_path / "ref" / "state").glob("part-*.json")))
    assert 0 < done_before < total  # killed in the middle
    resumed = run(tmp_path / "out")
    assert resumed.returncode == 0, resumed.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    ref_stats = json.loads((tmp_path / "ref" / "stats.json").read_text())
    assert stats["shards_resumed"] == done_before  # not from zero
    assert _comparable(stats) == _comparable(ref_stats)
    for sub in ("shards", "removed"):
        assert _files(tmp_path / "out" / sub) == _files(tmp_path / "ref" / sub)
    assert not list((tmp_path / "out").rglob("*.tmp"))


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_ray_executor_writes_the_same_clean_shards_and_prepare_rows(local_ray, tmp_path, smollm2_tokenizer_dir):
    from cptcore import make_plugin_manager
    from cptcore.clean.pipeline import CleanArgs, clean
    from cptcore.data.pipeline import PrepareArgs, prepare

    plugin = tmp_path / "no_first.py"  # a filter from a plugin file (cpt --plugin FILE) runs on Ray too
    plugin.write_text(NO_FIRST, encoding="utf-8")
    pm = make_plugin_manager(entrypoints=False, files=[plugin])
    corpus = tmp_path / "corpus.jsonl"
    planted_corpus(corpus)
    evalf = eval_file(tmp_path / "eval.jsonl")
    stats = {}
    for executor in ("local", "ray"):
        stats[executor] = clean(pm, CleanArgs(
            inputs=(str(corpus),), out=str(tmp_path / f"clean_{executor}"), filters=("no_first", "quality", "exact", "near"),
            languages=("zh",), decontaminate=(f"heldout={evalf}",), shard_docs=100, executor=executor, num_proc=2))
    assert _comparable(stats["ray"]) == _comparable(stats["local"])
    assert stats["ray"]["documents"]["removed"]["no_first"] > 0
    for sub in ("shards", "removed"):
        assert _files(tmp_path / "clean_ray" / sub) == _files(tmp_path / "clean_local" / sub)
    manifests = {}
    for executor in ("local", "ray"):
        out = tmp_path / f"prep_{executor}"
        manifests[executor] = prepare(pm, PrepareArgs(
            kind="pretrain", tokenizer=str(smollm2_tokenizer_dir), inputs=(str(tmp_path / "clean_local" / "shards"),),
            out=str(out), max_length=256, num_shards=2, executor=executor, num_proc=2, chunk_records=50))
    strip = lambda m: {k: v for k, v in m.items() if k not in ("seconds",)}  # noqa: E731
    assert strip(manifests["ray"]) == strip(manifests["local"])
    assert manifests["local"]["documents"]["read"] == stats["local"]["documents"]["kept"]
    arrow = sorted(p.name for p in (tmp_path / "prep_local").glob("*.arrow"))
    assert len(arrow) == 2
    for name in arrow:
        assert (tmp_path / "prep_ray" / name).read_bytes() == (tmp_path / "prep_local" / name).read_bytes()


DATA_LIMIT = 2 << 30  # private writable memory allowed to each run (RLIMIT_DATA; RLIMIT_AS
# would count the CUDA libraries torch maps, several GB of address space never touched)


def _peak_kb(args: list[str]) -> int:
    """Peak anonymous RSS (kB) of ``cpt ARGS`` under DATA_LIMIT (benchmarks/_rss.py)."""
    sys.path.insert(0, str(BENCH))
    try:
        from _rss import run_cpt
    finally:
        sys.path.remove(str(BENCH))
    return int(run_cpt(args, data_limit=DATA_LIMIT, timeout=900)["peak_anon_mb"] * 1024)


def test_clean_and_prepare_memory_stays_flat_as_the_input_grows(tmp_path, smollm2_tokenizer_dir):
    """Peak anonymous RSS of a 4 MB run against a 24 MB (clean) or 64 MB (prepare) run, each
    under RLIMIT_DATA (2 GiB): the growth is below half the extra input. Holding the input
    would cost more than twice it (Python strings + token arrays: 0.6 SmolLM2 tokens per
    byte of this corpus, int32). Measured (5 ms sampling): clean +0.4 to +1.1 MB for 20 MB
    more; prepare +16 to +18 MB for 60 MB more. Prepare's small-input peak is not yet at
    its plateau (allocator pools and ``save_to_disk``'s batches; +20.2 MB for 4 -> 24 MB was
    seen once, which is why prepare's large size is 64 MB; 1.2 GB: benchmarks/scale.py).
    The dedup indexes are on disk (tests/test_clean_index.py); documents stream."""
    from cptcore.clean.synthetic import synthetic_corpus

    corpora = {}
    for mb in (4, 24, 64):
        corpora[mb] = tmp_path / f"c{mb}.jsonl"
        synthetic_corpus(corpora[mb], mb << 20)

    def clean_kb(mb: int) -> int:
        return _peak_kb(["clean", "--input", str(corpora[mb]), "--out", str(tmp_path / f"clean{mb}"), "--filter", "quality",
                         "--filter", "exact", "--shard-mb", "1", "--no-progress"])

    def prepare_kb(mb: int) -> int:
        return _peak_kb(["prepare", "pretrain", "--tokenizer", str(smollm2_tokenizer_dir), "--input", str(corpora[mb]),
                         "--out", str(tmp_path / f"prep{mb}"), "--max-length", "512", "--no-progress"])

    for what, measure, small, large in (("clean", clean_kb, 4, 24), ("prepare", prepare_kb, 4, 64)):
        peaks = {small: measure(small), large: measure(large)}
        growth = (peaks[large] - peaks[small]) / 1024
        more = large - small
        assert growth < 0.5 * more, f"{what}: peak RSS grew {growth:.1f} MB for {more} MB more input (peak kB by input MB: {peaks})"
