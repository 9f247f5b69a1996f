"""The training path's speed options, checked against the machine and the model.

Each ``train.*`` / ``model.*`` performance option (precision, attention kernel, torch.compile,
optimizer, Liger kernels, dataloader workers) is resolved here into what the Trainer is given,
and refused in one line naming the option, what is missing and what works here, before anything
is written. Two checkpoints: :func:`preflight` (machine: GPU, packages, compiler; run before the
data work) and :func:`apply_to_model` (the model's architecture; right after it is built).

Module level stays torch-free.
"""

from __future__ import annotations

import functools
from typing import Any

from llmtune.errors import LlmtuneError

# llmtune optimizer names -> transformers' OptimizerNames
OPTIM_NAMES = {
    "auto": "adamw_torch_fused",
    "adamw_torch": "adamw_torch",
    "adamw_torch_fused": "adamw_torch_fused",
    "adamw_8bit": "adamw_bnb_8bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
}
ATTN_FLAGS = {
    "sdpa": "_supports_sdpa",
    "flash_attention_2": "_supports_flash_attn",
    "flex_attention": "_supports_flex_attn",
}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def machine() -> str:
    """One phrase for messages: the GPU's name, or 'no CUDA GPU'."""
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return "no CUDA GPU"


def bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def ampere_or_newer() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] >= 8


def resolve_precision(precision: str) -> str:
    """``train.precision`` -> fp32 | bf16 | fp16 on this machine (refusing what it cannot run)."""
    if precision == "auto":
        if not cuda_available():
            return "fp32"
        return "bf16" if bf16_supported() else "fp16"
    if precision == "bf16" and cuda_available() and not bf16_supported():
        raise LlmtuneError(
            f"train.precision=bf16: this GPU ({machine()}) has no bf16 support (needs Ampere or newer): "
            f"use train.precision=auto (fp16 here) or fp32"
        )
    if precision == "fp16" and not cuda_available():
        raise LlmtuneError(
            "train.precision=fp16 needs a CUDA GPU (this machine has none): use auto, bf16 or fp32 on CPU"
        )
    return precision


def flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def liger_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def machine_attention() -> list[str]:
    """Attention kernels this machine can run at all (before asking the model)."""
    out = ["sdpa"]
    if cuda_available() and flash_attn_installed():
        out.append("flash_attention_2")
    try:
        import torch.nn.attention.flex_attention  # noqa: F401

        out.append("flex_attention")
    except ImportError:
        pass
    return [*out, "eager"]


def model_attention(model: Any) -> list[str]:
    """Attention kernels both the model's architecture and this machine support."""
    base = _base_model(model)
    return [a for a in machine_attention() if a == "eager" or getattr(base, ATTN_FLAGS[a], False)]


@functools.lru_cache(maxsize=4)
def compile_problem(device: str, mode: str | None) -> str | None:
    """Why torch.compile (inductor) fails on ``device`` here, or None when a tiny function compiles.

    torch.compile is lazy: without this probe a missing C++ compiler or Triton would only surface
    at the first training step, as a long traceback.
    """
    import torch

    try:
        fn = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2 + 1, mode=mode)
        fn(torch.randn(16, device=device))
    except Exception as exc:  # a missing compiler, an unsupported platform or Python
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]
    finally:
        torch._dynamo.reset()
    return None


def preflight(cfg: Any) -> dict:
    """Machine-level checks of the performance options; returns the resolved settings
    (precision, optim, compile) for messages and TrainingArguments. Raises one-line errors."""
    t, m = cfg.train, cfg.model
    cuda = cuda_available()
    resolved = {"precision": resolve_precision(t.precision), "optim": OPTIM_NAMES[t.optim], "compile": t.compile}
    impl = m.attn_implementation
    if impl == "flash_attention_2":
        if not cuda or not flash_attn_installed():
            missing = "a CUDA GPU" if not cuda else "the flash-attn package (pip install flash-attn)"
            raise LlmtuneError(
                f"model.attn_implementation=flash_attention_2 needs {missing} ({machine()} here): "
                f"use one of {', '.join(machine_attention())}"
            )
        if resolved["precision"] == "fp32":
            raise LlmtuneError(
                "model.attn_implementation=flash_attention_2 runs in bf16/fp16 only: set train.precision=auto or bf16"
            )
    if impl == "flex_attention" and "flex_attention" not in machine_attention():
        raise LlmtuneError(
            f"model.attn_implementation=flex_attention needs torch >= 2.5: use one of {', '.join(machine_attention())}"
        )
    if t.optim == "adamw_8bit":
        if not cuda:
            raise LlmtuneError(
                "train.optim=adamw_8bit (bitsandbytes) needs a CUDA GPU (this machine has none): use auto or adamw_torch"
            )
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise LlmtuneError("train.optim=adamw_8bit needs bitsandbytes: pip install 'llmtune[quant]'")
    if t.liger_kernel:
        if not cuda:
            raise LlmtuneError(
                "train.liger_kernel needs a CUDA GPU (Liger kernels are Triton GPU kernels; this machine has none): "
                "set train.liger_kernel=false"
            )
        if not liger_installed():
            raise LlmtuneError("train.liger_kernel needs the liger-kernel package: pip install 'llmtune[liger]'")
    if t.compile:
        problem = compile_problem("cuda" if cuda else "cpu", t.compile_mode)
        if problem is not None:
            if not t.compile_fallback:
                raise LlmtuneError(
                    f"train.compile: torch.compile does not work on this machine ({problem}); set "
                    f"train.compile=false, or train.compile_fallback=true to run uncompiled when this happens"
                )
            from llmtune.console import echo

            echo(f"llmtune: torch.compile does not work here ({problem}): running uncompiled (train.compile_fallback)")
            resolved["compile"] = False
    return resolved


def _base_model(model: Any) -> Any:
    """The transformers model inside a peft wrapper."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def apply_to_model(cfg: Any, model: Any) -> None:
    """Model-level checks: switch to the requested attention kernel (refusing one the
    architecture lacks, naming those it has) and check Liger covers the architecture."""
    base = _base_model(model)
    name = type(base).__name__
    impl = cfg.model.attn_implementation
    if impl is not None and getattr(base.config, "_attn_implementation", None) != impl:
        available = model_attention(base)
        if impl not in available:
            raise LlmtuneError(
                f"model.attn_implementation={impl}: {name} does not support it; available for it here: "
                f"{', '.join(available)}"
            )
        try:
            base.set_attn_implementation(impl)
        except (ValueError, ImportError) as exc:
            text = str(exc).strip().splitlines()[0][:200]
            raise LlmtuneError(f"model.attn_implementation={impl} cannot be used with {name}: {text}") from exc
        if getattr(base.config, "_attn_implementation", None) != impl:
            raise LlmtuneError(
                f"model.attn_implementation={impl}: {name} cannot switch its attention kernel; "
                f"drop model.attn_implementation"
            )
    if cfg.train.liger_kernel:
        supported = liger_architectures()
        model_type = getattr(base.config, "model_type", "?")
        if model_type not in supported:
            raise LlmtuneError(
                f"train.liger_kernel: no Liger kernels for model type '{model_type}'; they exist for: "
                f"{', '.join(sorted(supported))}"
            )


def liger_architectures() -> set[str]:
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def training_kwargs(cfg: Any, resolved: dict | None = None) -> dict:
    """The TrainingArguments for the performance options (precision, TF32, compile, optim,
    Liger, dataloader)."""
    t = cfg.train
    resolved = resolved or {
        "precision": resolve_precision(t.precision),
        "optim": OPTIM_NAMES[t.optim],
        "compile": t.compile,
    }
    cuda = cuda_available()
    precision = resolved["precision"]
    kwargs: dict[str, Any] = {
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "optim": resolved["optim"],
        "use_liger_kernel": bool(t.liger_kernel),
        "dataloader_num_workers": t.dataloader_num_workers,
        "dataloader_pin_memory": cuda if t.dataloader_pin_memory is None else t.dataloader_pin_memory,
        "dataloader_persistent_workers": t.dataloader_persistent_workers,
    }
    if precision == "bf16" and not cuda:
        kwargs["use_cpu"] = True  # CPU autocast in bf16 (TrainingArguments refuses bf16 otherwise)
    if ampere_or_newer():
        kwargs["tf32"] = True
    if t.dataloader_prefetch_factor is not None:
        kwargs["dataloader_prefetch_factor"] = t.dataloader_prefetch_factor
    if resolved["compile"]:
        kwargs["torch_compile"] = True
        if t.compile_mode:
            kwargs["torch_compile_mode"] = t.compile_mode
    return kwargs
