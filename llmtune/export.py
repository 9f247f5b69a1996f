"""``llmtune export``: a run folder as a clean model folder for the Hub or an inference server.

Merged (or ``--merge``): the plain model (adapters merged into the base in fp32, then cast to
``--dtype``) as safetensors shards, with tokenizer, generation config, model card and the run's
``llmtune_config.yaml``. Adapters-only runs without ``--merge`` export the adapters (cast) with
the same companions. Everything is written to a staging folder renamed into place at the end, so
a failed export leaves no half-written folder and ``--overwrite`` replaces the old one only then.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from llmtune.config import CONFIG_FILENAME, read_yaml
from llmtune.errors import LlmtuneError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
SHARD_RE = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.I)
# peft task types -> the transformers auto class, for adapters exported without a llmtune config.
PEFT_AUTO = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "CAUSAL_LM": "AutoModelForCausalLM",
}


def check_output(output: Path, source: Path, overwrite: bool) -> None:
    if output.resolve() == source.resolve() or source.resolve() in output.resolve().parents:
        raise LlmtuneError(f"--output {output} is inside the run folder --model {source}: pick a folder outside it")
    if output.exists() and not output.is_dir():
        raise LlmtuneError(f"--output {output} is a file: pass a folder path")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise LlmtuneError(f"--output {output} is not empty: pass --overwrite to replace it, or another --output")
    parent = output.resolve().parent
    if not parent.is_dir():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise LlmtuneError(f"cannot create the parent folder of --output {output}: {exc.strerror}") from exc
    probe = parent / f".llmtune-write-test-{time.time_ns()}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise LlmtuneError(f"--output {output}: {parent} is not writable ({exc.strerror})") from exc


def auto_class(source: Path, is_adapters: bool) -> str:
    """The transformers auto class the run was trained with."""
    from llmtune.tasks import get_task

    if (source / CONFIG_FILENAME).is_file():
        task = read_yaml(source / CONFIG_FILENAME).get("task")
        if task:
            return get_task(str(task)).auto_model
    if is_adapters:
        from llmtune.adapters import ADAPTER_CONFIG

        task_type = json.loads((source / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("task_type")
        if task_type in PEFT_AUTO:
            return PEFT_AUTO[task_type]
        raise LlmtuneError(
            f"{source} has adapters but no {CONFIG_FILENAME} naming its task: cannot tell the model class"
        )
    config = source / "config.json"
    if not config.is_file():
        raise LlmtuneError(f"--model {source} holds no model (no config.json or adapter_config.json)")
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    if not architectures:
        raise LlmtuneError(f"{config} names no architecture and there is no {CONFIG_FILENAME}: cannot export it")
    return architectures[0]


def export_model(
    model: str,
    output: str,
    merge: bool = False,
    dtype: str = "fp32",
    max_shard_size: str = "5GB",
    overwrite: bool = False,
) -> Path:
    from llmtune.adapters import is_adapter_folder
    from llmtune.modeling import model_location

    if dtype.lower() not in DTYPES:
        raise LlmtuneError(f"--dtype must be fp32, bf16 or fp16, got '{dtype}'")
    if not SHARD_RE.match(max_shard_size):
        raise LlmtuneError(f"--max-shard-size must be a size like 5GB, 500MB or 100KB, got '{max_shard_size}'")
    source = Path(model_location(model))
    if not source.is_dir():
        raise LlmtuneError(f"--model {model} is not a local run folder: export works on folders written by llmtune")
    out = Path(output).expanduser()
    check_output(out, source, overwrite)
    adapters_only = is_adapter_folder(source)
    cls_name = auto_class(source, adapters_only)

    from llmtune.console import quiet_libraries
    from llmtune.modeling import prepare_hub_access

    prepare_hub_access(str(source))
    quiet_libraries(debug=False)
    staging = out.with_name(f".{out.name}.partial-export")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if adapters_only and not merge:
            what = _export_adapters(source, staging, DTYPES[dtype.lower()])
        else:
            what = _export_full(source, staging, cls_name, DTYPES[dtype.lower()], max_shard_size, adapters_only)
        _copy_companions(source, staging)
        _write_card(source, staging, what, dtype.lower(), cls_name)
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    from llmtune.console import echo

    echo(f"exported {what} ({dtype.lower()}) to {out}")
    return out


def _export_full(
    source: Path, staging: Path, cls_name: str, dtype: str, max_shard_size: str, adapters_only: bool
) -> str:
    import torch

    from llmtune.loading import merged_model

    if cls_name.startswith("Auto"):
        model = merged_model(source, cls_name)
    else:  # a model folder llmtune did not write: its own architecture class
        import transformers

        cls = getattr(transformers, cls_name, None)
        if cls is None:
            raise LlmtuneError(f"architecture {cls_name} is not in this transformers version")
        model = cls.from_pretrained(str(source), dtype=torch.float32)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(staging), max_shard_size=max_shard_size.replace(" ", "").upper())
    return "merged model (base + adapters)" if adapters_only else "model"


def _export_adapters(source: Path, staging: Path, dtype: str) -> str:
    import torch
    from safetensors.torch import load_file, save_file

    from llmtune.adapters import ADAPTER_CONFIG, MODEL_CONFIG_FILE

    weights = source / "adapter_model.safetensors"
    if weights.is_file():
        tensors = load_file(str(weights))
    elif (source / "adapter_model.bin").is_file():
        tensors = torch.load(str(source / "adapter_model.bin"), map_location="cpu", weights_only=True)
    else:
        raise LlmtuneError(f"{source} has {ADAPTER_CONFIG} but no adapter_model.safetensors")
    target = getattr(torch, dtype)
    tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
    for name in (ADAPTER_CONFIG, MODEL_CONFIG_FILE):
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    return "adapters"


def _copy_companions(source: Path, staging: Path) -> None:
    """Tokenizer (re-saved, so only its files come along), generation config and the run config."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is not None:
        tokenizer.save_pretrained(str(staging))
    for name in ("generation_config.json", CONFIG_FILENAME, "preprocessor_config.json"):
        if (source / name).is_file() and not (staging / name).exists():
            shutil.copy2(source / name, staging / name)


def _write_card(source: Path, staging: Path, what: str, dtype: str, cls_name: str) -> None:
    from llmtune.runner import command_line

    card = source / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else f"# {staging.name}\n\nExported with llmtune.\n"
    if what == "adapters":
        text = text.replace("library_name: transformers", "library_name: peft", 1)
    lines = [
        "",
        "## Export",
        "",
        f"Exported from `{source}` with `{command_line()}`: {what}, {dtype} safetensors.",
        "",
    ]
    if what == "adapters":
        lines.append(
            f"Load with `peft.PeftModel.from_pretrained(base, folder)` on a `{cls_name}` base, or "
            f"`llmtune export --merge` for a plain model."
        )
    else:
        lines.append(f"Load with `transformers.{cls_name}.from_pretrained(folder)` or `pipeline(model=folder)`.")
    (staging / "README.md").write_text(text.rstrip() + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
