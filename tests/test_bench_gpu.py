"""benchmarks/bench_gpu.py in its CPU smoke mode (tiny model, 3 steps per variant), so the GPU
benchmark keeps working between the runs on a GPU machine."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mfu_inputs():
    bench = _load()
    assert bench.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert bench.peak_tflops("NVIDIA H200", None) == 989.0
    assert bench.peak_tflops("Some GPU", None) is None and bench.peak_tflops(None, 100.0) == 100.0
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(bench.model_config(bench.SMOKE))
    total = sum(p.numel() for p in model.parameters())
    assert bench.matmul_params(model) == total  # tied embeddings: the shared matrix counts once


@pytest.mark.slow
@pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="the GPU run is the real benchmark")
def test_bench_gpu_smoke_runs_every_cpu_variant(tmp_path):
    bench = _load()
    assert bench.main(["--smoke", "--no-write", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    names = [r["name"] for r in data["results"]]
    assert names == ["reference", "plain Trainer", "padded instead of packed", "+grad-ckpt", "+chunked loss"]
    for r in data["results"]:
        assert "error" not in r and r["tokens_per_s"] > 0 and r["useful_tokens_measured"] > 0
    # every variant trains the same documents in the same order: packed, padded, checkpointed, the
    # chunked loss and the plain Trainer end at the same loss
    losses = [r["final_loss"] for r in data["results"]]
    assert max(losses) - min(losses) < 1e-3
    assert any(s.startswith("FlashAttention-2: no CUDA GPU") for s in data["skipped"])
    assert "| plain Trainer |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="the GPU run is the real benchmark")
def test_gpu_check_script_reports_versions_and_exits_non_zero_without_a_gpu(tmp_path):
    """benchmarks/gpu_check.sh (the one prepared GPU command) runs llmtune from the tree, writes its
    version report, and fails clearly on a machine without CUDA instead of passing silently."""
    import subprocess
    import sys

    script = BENCH.parent / "gpu_check.sh"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)}
    env["WHEELS"] = str(tmp_path / "no-wheels")  # not a developer's local .whl
    shadow = tmp_path / "shadow" / "llmtune"  # an llmtune found before the tree would be the wrong one
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("__version__ = 'shadow'\n")
    env["PYTHONPATH"] = str(shadow.parent)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.md").write_text("an earlier run's figures\n")
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "bench_gpu exit 2, check_accelerate_gpu exit 2" in proc.stdout
    versions = (tmp_path / "out" / "versions.txt").read_text()
    llmtune_line = next(line for line in versions.splitlines() if line.startswith("llmtune "))
    assert str(BENCH.parent.parent / "llmtune") in llmtune_line  # this tree's llmtune, not an installed one
    assert "cuda False" in versions
    assert "no CUDA GPU here" in (tmp_path / "out" / "bench_gpu.log").read_text()
    assert not (tmp_path / "out" / "results.md").exists()  # nothing stale left to --record


def test_budget_used_up_records_variants_as_not_run(tmp_path):
    bench = _load()
    assert bench.main(["--smoke", "--no-write", "--budget", "5", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["error"] for r in data["results"]] == ["not run: --budget 5 s used up"] * len(data["results"])
    assert "failed: not run" in (tmp_path / "results.md").read_text()


def test_record_takes_only_a_bench_gpu_results_file(tmp_path, monkeypatch):
    bench = _load()
    import _lmbench  # on sys.path once bench_gpu.py is loaded

    written = {}
    monkeypatch.setattr(_lmbench, "update_benchmarks_md", lambda section, body: written.update({section: body}))
    other = tmp_path / "other.md"
    other.write_text("# something else\n")
    assert bench.main(["--record", str(other)]) == 2 and not written
    results = tmp_path / "results.md"
    results.write_text("## GPU training throughput (bench_gpu.py, issue 12)\n\n| variant |\n")
    assert bench.main(["--record", str(results)]) == 0
    assert written == {"bench_gpu": results.read_text()}


@pytest.mark.slow
def test_a_variant_runs_in_its_own_process(tmp_path):
    """On a GPU every variant runs through run_child (a fresh process): the same path, tiny."""
    bench = _load()
    spec = {"name": "padded instead of packed", "kind": "llmtune", "smoke": True, "warmup": 1, "measure": 2}
    spec["options"] = {"attn": "sdpa", "packing": False, "liger": False, "compile": False, "grad_ckpt": False}
    spec["out"] = str(tmp_path)
    result = bench.run_child(spec, timeout=240)
    assert "error" not in result, result
    assert result["name"] == "padded instead of packed" and result["steps_measured"] == 2
    assert result["tokens_per_s"] > 0 and result["useful_tokens_measured"] > 0
    failed = bench.run_child({**spec, "name": "broken", "kind": "llmtune", "options": {}}, timeout=240)
    assert failed["name"] == "broken" and failed["error"].startswith("exit 1")  # recorded, not fatal
