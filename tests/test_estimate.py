"""llmtune estimate: parameter counts equal the instantiated models', LoRA counts equal peft's,
the printed verdict, bad input; measured memory in a subprocess (slow). The cost model's memory and
FLOP arithmetic is in test_costmodel.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmtune.costmodel import count_parameters
from llmtune.estimate import meta_model

ROOT = Path(__file__).resolve().parent.parent


def real_count(config, auto_class: str) -> int:
    import torch
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, auto_class).from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", ["bert-tiny", "bert-mini", "bert-small", "bert-base", "gpt2-tiny", "gpt2-mini",
                                    "gpt2-small", "llama-tiny"])  # fmt: skip
def test_preset_counts_equal_instantiated(preset):
    from llmtune.estimate import load_model_config

    config = load_model_config(model_config=preset, vocab_size=1000)
    auto = "AutoModelForMaskedLM" if preset.startswith("bert") else "AutoModelForCausalLM"
    counted = count_parameters(meta_model(config, auto)).total
    assert counted == real_count(config, auto)


def shipped_offline_recipes() -> list[str]:
    """Recipes whose model config is on this machine (presets, builtin: configs, package: models)."""
    from llmtune.paths import resolve_location
    from llmtune.resolve import load_config

    names = []
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        cfg = load_config(recipe=str(path))
        spec = cfg.model.config or cfg.model.name_or_path
        from llmtune.presets import get_preset

        if spec and (get_preset(spec) is not None or Path(resolve_location(spec)).expanduser().exists()):
            names.append(path.stem)
    return names


@pytest.mark.parametrize("recipe", shipped_offline_recipes())
def test_recipe_counts_equal_instantiated(recipe):
    from llmtune.errors import LlmtuneError
    from llmtune.estimate import Request, resolve

    try:
        target = resolve(Request(recipe=recipe))
    except LlmtuneError as exc:  # asr: the CTC vocabulary comes from the data
        assert "--vocab-size" in str(exc)
        target = resolve(Request(recipe=recipe, vocab_size=32))
    if (getattr(target.config, "vocab_size", None) or 0) > 8192 and "pretrain" in recipe:
        # from scratch with a tokenizer not trained yet: a smaller vocabulary keeps the real build cheap
        target = resolve(Request(recipe=recipe, vocab_size=8192))
    counted = count_parameters(meta_model(target.config, target.auto_class)).total
    assert counted == real_count(target.config, target.auto_class)


def test_every_shipped_recipe_is_covered_or_needs_the_hub():
    offline = set(shipped_offline_recipes())
    assert {"clm-smoke", "mlm-smoke", "sft-smoke", "clm-pretrain", "sentiment-demo"} <= offline


@pytest.mark.parametrize("preset,task", [("gpt2-tiny", None), ("llama-tiny", None), ("bert-tiny", "sentiment")])
def test_lora_counts_equal_peft(preset, task):
    import transformers
    from peft import LoraConfig, TaskType, get_peft_model

    from llmtune.estimate import load_model_config

    config = load_model_config(model_config=preset, vocab_size=500)
    auto = "AutoModelForSequenceClassification" if task else "AutoModelForCausalLM"
    train_head = task is not None
    est = count_parameters(meta_model(config, auto), lora_r=8, train_head=train_head)
    real = getattr(transformers, auto).from_config(config)
    peft_task = TaskType.SEQ_CLS if task else TaskType.CAUSAL_LM
    model = get_peft_model(real, LoraConfig(r=8, target_modules="all-linear", task_type=peft_task))
    trainable, total = model.get_nb_trainable_parameters()
    assert est.trainable == trainable
    assert est.total == total


def test_cli_verdict_and_knobs(cli):
    result = cli("estimate", "--model-config", "gpt2-small", "--batch-size", "64", "--seq-len", "1024", "--gpu", "t4",
                 "--tokens", "1e9")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "124,439,808" in result.output and "does NOT fit on t4" in result.output
    assert "would fit with:" in result.output and "gradient accumulation" in result.output
    assert "training FLOPs" in result.output and "GPU-hours" in result.output
    fits = cli("estimate", "--recipe", "clm-smoke", "--gpu", "h100", "--lora-r", "4")
    assert fits.exit_code == 0 and "fits on h100" in fits.output and "LoRA" in fits.output
    budget = cli("estimate", "--gpu-hours", "1000", "--gpu", "h100")
    assert budget.exit_code == 0 and "3.44B parameters" in budget.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model-config", "gpt2-tiny", "--gpu", "h1000"], "known: b200"),
        (["--model-config", "gpt2-tiny", "--batch-size", "0"], "--batch-size must be > 0"),
        (["--model-config", "gpt2-tiny", "--tokens", "-5"], "--tokens must be > 0"),
        (["--model-config", "gpt2-tiny", "--gpus", "0"], "--gpus must be > 0"),
        (["--model-config", "gpt2-tiny", "--precision", "int3"], "--precision must be one of"),
        (["--model-config", "gpt2-tiny", "--sharding", "zero9"], "--sharding must be one of"),
        (["--model-config", "./missing/config.json"], "model config not found"),
        (["--model", "./missing-folder"], "model folder not found"),
        (["--model-config", "gpt2-tiny", "--mfu", "2"], "--mfu must be in"),
        ([], "nothing to estimate"),
        (["--model-config", "gpt2-tiny", "--measure"], "--measure trains the model for a few steps: pass --recipe"),
        (["--model", "./missing-folder", "--measure"], "--measure with --model needs --task"),
        (["--recipe", "clm-smoke", "--measure-steps", "2"], "add --measure"),
        (["--recipe", "clm-smoke", "--measure", "--measure-steps", "0"], "--measure-steps must be >= 1"),
        (["--recipe", "clm-smoke", "--measure", "--gpus", "2"], "--measure runs on one device"),
        (["--recipe", "clm-smoke", "--measure", "--precision", "pure-bf16"], "no pure-bf16"),
        (["--recipe", "clm-smoke", "--measure", "--vocab-size", "500"], "drop --vocab-size"),
        (["--recipe", "clm-smoke", "--measure", "--set", "train.loss_chunk_size=0"], "train.loss_chunk_size must be"),
    ],
)
def test_bad_input_one_line(cli, args, needle):
    result = cli("estimate", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1


MEASURED_ROW = re.compile(
    r"^  (training step peak|added by training|  of which gradients \+ AdamW states|whole run, peak resident memory)\D*?\s(-|[\d,]+\.\d)\s+([\d,]+\.\d)"
)


def measured_rows(output: str) -> dict:
    """The --measure table: row label -> (estimate or None for '-', measured), in MiB."""
    rows = {}
    for line in output.splitlines():
        if match := MEASURED_ROW.match(line):
            est, meas = (None if v == "-" else float(v.replace(",", "")) for v in match.group(2, 3))
            rows[match.group(1)] = (est, meas)
    return rows


@pytest.mark.parametrize("recipe", ["clm-smoke", "sft-smoke"])
def test_measure_prints_the_estimate_next_to_the_measured_peak(recipe, cli, tmp_path, monkeypatch):
    import tempfile

    from llmtune.costmodel import Setup, arch_from_config, memory
    from llmtune.estimate import Request, resolve
    from llmtune.hardware import cuda_available

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run's temporary folder goes here
    result = cli("estimate", "--recipe", recipe, "--measure", "--measure-steps", "2")
    assert result.exit_code == 0, result.output
    assert "measured     2 optimizer steps on this machine" in result.output
    assert f"llmtune {'pretrain' if recipe == 'clm-smoke' else 'finetune'} --recipe {recipe} --max-steps 2" in (
        result.output
    )
    assert "--set train.longest_first=2" in result.output  # the steps measured take the longest rows
    rows = measured_rows(result.output)
    states = "  of which gradients + AdamW states"
    assert set(rows) == {"training step peak", "added by training", states, "whole run, peak resident memory"}
    # the estimate row is the cost model for this machine's device and precision
    target = resolve(Request(recipe=recipe))
    gpu = cuda_available()
    setup = Setup(target.batch_size, target.seq_len, "mixed" if gpu else "fp32", device="cuda" if gpu else "cpu")
    params = count_parameters(meta_model(target.config, target.auto_class))
    expected = memory(arch_from_config(target.config), params, setup, target.lm_head)
    estimate, measured = rows["training step peak"]
    assert estimate == pytest.approx(expected.total / 2**20, abs=0.05)
    assert rows["added by training"][0] == pytest.approx((expected.total - expected.weights) / 2**20, abs=0.05)
    assert measured > 0 and rows["added by training"][1] > 0 and rows["whole run, peak resident memory"][1] > 0
    # the static part: what an optimizer step leaves (gradients and AdamW states), below what the step added
    assert rows[states][0] == pytest.approx((expected.gradients + expected.optimizer) / 2**20, abs=0.05)
    assert 0 < rows[states][1] <= rows["added by training"][1]
    if not gpu:  # resident memory: the runtime comes on top of the tensors, and the step peak is within the run's
        assert measured > estimate and rows["whole run, peak resident memory"][1] >= 0.9 * measured
        assert "Python/torch runtime" in result.output
    difference = result.output.split("training step peak", 1)[1].splitlines()[0].split()[-2]
    assert int(difference) == pytest.approx(100 * (measured - estimate) / estimate, rel=0.01, abs=1)  # rounded MiB
    assert not list(tmp_path.glob("llmtune-measure-*"))  # the run's folder is gone
    # sft's packed rows are shorter than the estimate's rows of data.max_length; clm blocks are not
    assert (f"{target.batch_size} rows of {target.seq_len} tokens per micro-batch" in result.output) == (
        recipe == "sft-smoke"
    )


def test_measure_reports_a_failed_run_in_one_line(cli, tmp_path):
    result = cli("estimate", "--recipe", "clm-smoke", "--measure", "--set", f"data.dataset={tmp_path / 'none.txt'}")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "estimate --measure: the run failed (" in lines[0] and "none.txt" in lines[0], (
        result.output
    )


def test_unbuildable_config(cli, tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "gpt2", "n_embd": 30, "n_head": 4, "n_layer": 2}))  # 30 % 4 != 0
    result = cli("estimate", "--model-config", bad)
    assert result.exit_code == 2 and "cannot build" in result.output, result.output


@pytest.mark.slow
def test_estimate_matches_measured_cpu_memory():
    """Weights+grads+AdamW within 10 % and activations within 25 % of what a CPU process allocates."""
    from benchmarks.bench_estimate import estimate

    case = ["gpt2-mini clm fp32", "gpt2-mini", "clm", 8000, 4, 128, "fp32", False]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    code = (
        "import json; from benchmarks.bench_estimate import child; "
        f"print('RESULT', json.dumps(child(json.loads({json.dumps(case)!r}))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    est = estimate(case)
    assert measured["params"] == est["params"]
    assert abs(est["static"] / measured["static"] - 1) <= 0.10, (est, measured)
    assert abs(est["activations"] / measured["activations"] - 1) <= 0.25, (est, measured)
    assert measured["static"] > 50 * 2**20  # a real allocation was measured (5.5M parameters x 16 bytes)
