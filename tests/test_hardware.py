"""Performance options: typed config, what they turn into, one-line refusals where the machine or
model cannot run them, and runs on CPU with the ones that can."""

from __future__ import annotations

import json

import pytest

from llmtune import hardware
from llmtune.errors import ConfigError, LlmtuneError
from llmtune.resolve import load_config

needs_no_gpu = pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="checks the CPU refusals")


def test_config_rejects_bad_performance_values_all_at_once():
    sets = [
        "train.precision=fp8",
        "model.attn_implementation=flash3",
        "train.compile_mode=fastest",
        "train.optim=lion",
        "train.dataloader_prefetch_factor=2",
        "train.dataloader_persistent_workers=true",
    ]
    with pytest.raises(ConfigError) as err:
        load_config(task="sentiment", sets=sets)
    text = "\n".join(err.value.problems)
    for needle in (
        "train.precision must be one of auto, fp32, bf16, fp16",
        "model.attn_implementation must be one of sdpa, flash_attention_2, flex_attention, eager",
        "train.compile_mode must be one of",
        "train.compile_mode / train.compile_fallback need train.compile=true",
        "train.optim must be one of auto,",
        "need worker processes: set train.dataloader_num_workers >= 1",
    ):
        assert needle in text


@needs_no_gpu
def test_auto_resolves_to_fp32_and_fused_adamw_on_cpu():
    cfg = load_config(task="sentiment")
    assert cfg.train.precision == "auto" and cfg.train.optim == "auto"
    kwargs = hardware.training_kwargs(cfg, hardware.preflight(cfg))
    assert kwargs["bf16"] is False and kwargs["fp16"] is False and "tf32" not in kwargs
    assert kwargs["optim"] == "adamw_torch_fused" and kwargs["dataloader_pin_memory"] is False
    assert "torch_compile" not in kwargs and kwargs["use_liger_kernel"] is False
    sets = [
        "train.precision=bf16",
        "train.optim=adamw_torch",
        "train.dataloader_num_workers=2",
        "train.dataloader_prefetch_factor=4",
        "train.dataloader_persistent_workers=true",
        "train.dataloader_pin_memory=true",
    ]
    cfg = load_config(task="sentiment", sets=sets)
    kwargs = hardware.training_kwargs(cfg, hardware.preflight(cfg))
    assert kwargs["bf16"] is True and kwargs["use_cpu"] is True  # CPU autocast in bf16
    assert kwargs["optim"] == "adamw_torch" and kwargs["dataloader_prefetch_factor"] == 4
    assert kwargs["dataloader_persistent_workers"] is True and kwargs["dataloader_pin_memory"] is True


@needs_no_gpu
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "model.attn_implementation=flash_attention_2",
            "flash_attention_2 needs a CUDA GPU (no CUDA GPU here): use one of sdpa",
        ),
        ("train.precision=fp16", "train.precision=fp16 needs a CUDA GPU"),
        ("train.optim=adamw_8bit", "train.optim=adamw_8bit (bitsandbytes) needs a CUDA GPU"),
        ("train.liger_kernel=true", "train.liger_kernel needs a CUDA GPU"),
    ],
)
def test_cpu_refuses_gpu_only_options_in_one_line(cli, tmp_path, setting, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    result = cli("finetune", "--recipe", "sft-smoke", "-o", out, "--overwrite", "--set", setting)
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output[-600:]
    assert "Traceback" not in result.output
    assert (out / "keep.txt").read_text() == "earlier work"  # refused before anything was touched


def test_compile_refused_where_it_fails_unless_fallback(monkeypatch):
    monkeypatch.setattr(hardware, "compile_problem", lambda device, mode: "RuntimeError: no C++ compiler")
    cfg = load_config(task="sentiment", sets=["train.compile=true"])
    with pytest.raises(LlmtuneError, match=r"torch.compile does not work on this machine \(RuntimeError: no C\+\+"):
        hardware.preflight(cfg)
    cfg = load_config(task="sentiment", sets=["train.compile=true", "train.compile_fallback=true"])
    resolved = hardware.preflight(cfg)
    assert resolved["compile"] is False
    assert "torch_compile" not in hardware.training_kwargs(cfg, resolved)


@pytest.mark.slow
def test_compile_works_here_and_becomes_torch_compile():
    if hardware.compile_problem("cpu", None) is not None:
        pytest.skip("torch.compile does not work on this machine")
    cfg = load_config(task="sentiment", sets=["train.compile=true", "train.compile_mode=max-autotune-no-cudagraphs"])
    kwargs = hardware.training_kwargs(cfg, hardware.preflight(cfg))
    assert kwargs["torch_compile"] is True and kwargs["torch_compile_mode"] == "max-autotune-no-cudagraphs"


def _llama(cls_patch: dict | None = None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cls = type("TinyLlama", (LlamaForCausalLM,), cls_patch or {})
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    return cls(config)


def test_attention_is_switched_or_refused_naming_what_the_model_has():
    model = _llama()
    cfg = load_config(task="sentiment", sets=["model.attn_implementation=eager"])
    hardware.apply_to_model(cfg, model)
    assert model.config._attn_implementation == "eager"
    no_flex = _llama({"_supports_flex_attn": False})
    cfg = load_config(task="sentiment", sets=["model.attn_implementation=flex_attention"])
    with pytest.raises(LlmtuneError) as err:
        hardware.apply_to_model(cfg, no_flex)
    assert str(err.value).startswith("model.attn_implementation=flex_attention: TinyLlama does not support it")
    assert "available for it here: sdpa" in str(err.value) and "flex_attention," not in str(err.value)


@pytest.mark.slow
def test_sft_trains_with_packing_bf16_eager_and_dataloader_workers(cli, tmp_path):
    """The CPU-runnable options in one short run: padding-free packing, bf16 autocast, eager
    attention, plain AdamW, a prefetching persistent worker."""
    out = tmp_path / "sft"
    sets = [
        "train.precision=bf16",
        "model.attn_implementation=eager",
        "train.optim=adamw_torch",
        "train.dataloader_num_workers=1",
        "train.dataloader_prefetch_factor=2",
        "train.dataloader_persistent_workers=true",
        "options.num_samples=0",
    ]
    args = ["finetune", "--recipe", "sft-smoke", "-o", out, "--max-steps", "4"]
    for item in sets:
        args += ["--set", item]
    result = cli(*args)
    assert result.exit_code == 0, result.output[-2000:]
    assert "precision bf16, attention eager, optimizer adamw_torch" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["train_loss"] > 0 and metrics["eval"]["eval_tokens"] > 0


@pytest.mark.slow
def test_clm_trains_compiled(cli, tmp_path):
    if hardware.compile_problem("cpu", None) is not None:
        pytest.skip("torch.compile does not work on this machine")
    out = tmp_path / "clm"
    args = ["pretrain", "--recipe", "clm-smoke", "-o", out, "--max-steps", "3", "--set", "train.compile=true"]
    args += ["--set", "train.eval_strategy=no", "--set", "options.eval_on_start=false"]
    result = cli(*args)
    assert result.exit_code == 0, result.output[-2000:]
    assert "torch.compile (default)" in result.output
    assert json.loads((out / "metrics.json").read_text())["train"]["train_loss"] > 0


def test_attention_the_model_lacks_is_refused_in_one_line(cli, tmp_path):
    out = tmp_path / "out"
    result = cli("pretrain", "--recipe", "clm-smoke", "-o", out, "--set", "model.attn_implementation=flex_attention")
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert lines == [
        "error: model.attn_implementation=flex_attention: GPT2LMHeadModel does not support it; "
        "available for it here: sdpa, eager"
    ], result.output[-600:]
    assert not (out / "llmtune_config.yaml").exists()  # refused before anything was written
