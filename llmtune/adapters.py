"""Parameter-efficient fine-tuning (LoRA, DoRA, IA3, QLoRA) through ``peft``, for every task.

The ``peft:`` config section (:class:`llmtune.config.PeftArgs`) decides; this module is the one
place that talks to peft:

- :func:`apply_adapters` wraps the model the task built (``get_peft_model`` with the task's
  ``peft_task_type``; its head modules trained in full via ``modules_to_save``) and prints the
  trainable vs total parameter count. The runner calls it for every task.
- :func:`quantization_kwargs` is what ``from_pretrained`` gets for QLoRA (4-bit NF4 base).
- :func:`save_adapted` writes the final model: the Trainer saves the adapters; with
  ``peft.merge`` (default) they move to ``adapter/`` and the merged model is saved at the top, so
  the folder loads with plain ``from_pretrained`` / ``pipeline``.
- :func:`load_trained` loads an adapters-only folder (the base named in the run's config or
  ``adapter_config.json``, loaded by :func:`llmtune.modeling.load_pretrained`, the adapters on
  top). :func:`llmtune.loading.load_model` sends adapter folders here, so ``eval``, ``predict``
  and training from an adapter folder (the adapters merged first) all work for every task.

The task a run trains is passed in by the runner (its peft task type and head modules); this
module looks nothing up in the task registry.

A folder is *adapters-only* when it holds ``adapter_config.json`` and no full weights. Next to the
adapters llmtune writes :data:`MODEL_CONFIG_FILE`, the trained model's config (label names, head
size, resized vocabulary...), which the base is loaded with before the adapters go on top.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune.console import echo
from llmtune.errors import LlmtuneError

if TYPE_CHECKING:  # pragma: no cover
    from llmtune.config import PeftArgs

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# The trained model's config.json, saved beside adapters-only weights (not named config.json: a
# folder with config.json reads as a full model to transformers and the Hub).
MODEL_CONFIG_FILE = "llmtune_model_config.json"
ADAPTER_SUBDIR = "adapter"
FULL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
METHOD_NAMES = {"lora": "LoRA", "dora": "DoRA", "ia3": "IA3"}


def enabled(cfg: Any) -> bool:
    peft = getattr(cfg, "peft", None)
    return peft is not None and peft.method != "none"


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def is_adapter_folder(path: str | Path) -> bool:
    """Adapters without full model weights (``peft.merge=false``, or the ``adapter/`` subfolder)."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not any((path / name).is_file() for name in FULL_WEIGHTS)


def _import_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise LlmtuneError("adapters (peft.method) need peft: pip install 'llmtune[peft]'") from None
    return peft


# ---------------------------------------------------------------------------------------------
# QLoRA


def check_runtime(cfg: Any) -> None:
    """Refuse QLoRA where it cannot run, before any data or model is loaded."""
    if not enabled(cfg) or not cfg.peft.load_in_4bit:
        return
    import torch

    if not torch.cuda.is_available():
        raise LlmtuneError(
            "peft.load_in_4bit (QLoRA) needs a CUDA GPU and this machine has none: drop peft.load_in_4bit "
            "to train the adapters on full-precision weights, or run on a GPU"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LlmtuneError("peft.load_in_4bit (QLoRA) needs bitsandbytes: pip install 'llmtune[quant]'") from None


def quantization_kwargs(ctx: Any) -> dict:
    """Extra ``from_pretrained`` arguments for the base model (QLoRA: 4-bit NF4 on this process's GPU)."""
    if not ctx.training or not enabled(ctx.cfg) or not ctx.cfg.peft.load_in_4bit:
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    from llmtune.launch import distributed_state

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return {"quantization_config": config, "device_map": {"": distributed_state().local_process_index}}


# ---------------------------------------------------------------------------------------------
# wrapping a model


def module_names(model: Any, limit: int = 12) -> list[str]:
    """Distinct short names of the model's adaptable (linear / conv / embedding) modules."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    names: dict[str, None] = {}
    for name, module in model.named_modules():
        if name and (isinstance(module, kinds) or type(module).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")):
            names.setdefault(name.rsplit(".", 1)[-1], None)
    return list(names)[:limit]


def head_modules(task: Any, model: Any) -> list[str]:
    """The task's head modules that exist in this model (trained in full next to the adapters)."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    return [name for name in task.head_modules if name in present]


def new_modules(model: Any, new_weights: list[str]) -> list[str]:
    """Leaf modules whose weights the checkpoint lacked (randomly initialised at load time, e.g.
    BERT's pooler under a classifier): they must be trained and saved with the adapters, or an
    adapters-only folder would reload them as different random weights. The output embedding
    (tied to the input embedding) is left out."""
    modules = dict(model.named_modules())
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found: dict[str, None] = {}
    for key in new_weights:
        owner = key.rsplit(".", 1)[0] if "." in key else ""
        module = modules.get(owner)
        if module is None or not owner or any(True for _ in module.children()) or module is output:
            continue
        found.setdefault(owner, None)
    return list(found)


def peft_config(cfg: PeftArgs, task: Any, model: Any, new_weights: list[str] | None = None) -> Any:
    peft = _import_peft()
    targets: Any = cfg.target_modules
    if targets is not None and [t.replace("_", "-") for t in targets] == ["all-linear"]:
        targets = "all-linear"
    if cfg.modules_to_save is None:
        heads = head_modules(task, model)
        extra = [m for m in new_modules(model, new_weights or []) if m.rsplit(".", 1)[-1] not in heads]
        to_save = heads + extra or None
    else:
        to_save = list(cfg.modules_to_save) or None
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
        missing = [m for m in to_save or [] if m not in present and not any(n.endswith(m) for n in present)]
        if missing:
            raise LlmtuneError(
                f"peft.modules_to_save {', '.join(missing)} not found in {type(model).__name__}; "
                f"module names include: {', '.join(module_names(model))}"
            )
    common = {"task_type": task.peft_task_type, "target_modules": targets, "modules_to_save": to_save}
    if cfg.method == "ia3":
        return peft.IA3Config(**common)
    return peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        use_dora=cfg.method == "dora",
        **common,
    )


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights counted unpacked (as peft does)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return tuple(int(x) for x in model.get_nb_trainable_parameters())  # type: ignore[return-value]
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def apply_adapters(ctx: Any, model: Any, task: Any) -> Any:
    """Wrap ``model`` in the adapters ``ctx.cfg.peft`` asks for; returns the model to train.

    ``task`` (a :class:`llmtune.tasks.base.Task`) gives the peft task type and the head modules
    trained in full. With ``peft.method=none`` the model is returned unchanged. Either way the
    trainable and total parameter counts go to ``ctx.state`` (``trainable_params``, ``total_params``).
    """
    cfg = ctx.cfg
    if enabled(cfg):
        peft = _import_peft()
        config = peft_config(cfg.peft, task, model, ctx.state.get("new_weights"))
        if cfg.peft.load_in_4bit:
            model = peft.prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.train.gradient_checkpointing
            )
        try:
            model = peft.get_peft_model(model, config)
        except (ValueError, TypeError, KeyError) as exc:  # NoMatchingPeftModuleError is a ValueError
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "target_modules" in text.lower() or "target modules" in text.lower():
                raise LlmtuneError(
                    f"peft.target_modules {_shown(cfg.peft.target_modules)} match nothing in "
                    f"{type(model).__name__}; its module names include: {', '.join(module_names(model))} "
                    f"(or use [all-linear])"
                ) from exc
            raise LlmtuneError(f"{cfg.peft.method} adapters cannot wrap {type(model).__name__}: {text}") from exc
        if cfg.train.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    trainable, total = count_parameters(model)
    ctx.state["trainable_params"], ctx.state["total_params"] = trainable, total
    if enabled(cfg):
        present = {name for name, _ in model.get_base_model().named_modules() if name}
        present |= {name.rsplit(".", 1)[-1] for name in present}
        saved = sorted({m for m in model.peft_config["default"].modules_to_save or () if m in present})
        extra = f"; trained in full: {', '.join(saved)}" if saved else ""
        quant = ", 4-bit NF4 base (QLoRA)" if cfg.peft.load_in_4bit else ""
        echo(
            f"llmtune: {METHOD_NAMES[cfg.peft.method]} adapters{quant}: {trainable:,} trainable of {total:,} "
            f"parameters ({100 * trainable / max(total, 1):.2f}%){extra}"
        )
    return model


def _shown(targets: Any) -> str:
    return "(peft's default)" if targets is None else "[" + ", ".join(targets) + "]"


# ---------------------------------------------------------------------------------------------
# saving


def save_adapted(ctx: Any, trainer: Any, output_dir: str | Path, task: Any) -> None:
    """Save the final model into ``output_dir`` (call on every process, like ``save_model``).

    A model without adapters: ``trainer.save_model``. With adapters: the adapters (plus
    :data:`MODEL_CONFIG_FILE` and the tokenizer); with ``peft.merge`` they go to ``adapter/`` and
    the merged model is saved at the top level.
    """
    from llmtune.launch import distributed_state

    output_dir = Path(output_dir)
    trainer.save_model(str(output_dir))
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not is_peft_model(model):
        return
    state = distributed_state()
    if state.is_main_process:
        base_config = model.get_base_model().config
        target = output_dir
        if ctx.cfg.peft.merge:
            target = output_dir / ADAPTER_SUBDIR
            if target.exists():
                shutil.rmtree(target)
            target.mkdir()
            for name in (ADAPTER_CONFIG, *ADAPTER_WEIGHTS):
                if (output_dir / name).is_file():
                    shutil.move(str(output_dir / name), str(target / name))
            if ctx.tokenizer is not None:
                ctx.tokenizer.save_pretrained(target)  # adapter/ loads on its own too
            ctx.saved_config().save(target)
        _write_model_config(base_config, target)
        if ctx.cfg.peft.merge:
            if ctx.cfg.peft.load_in_4bit:
                # Merging into 4-bit weights would round them: reload the base in full precision.
                merged = load_trained(target, task.auto_model, merge=True)
            else:
                merged = model.merge_and_unload()
                ctx.model = merged
            merged.save_pretrained(output_dir)
    state.wait_for_everyone()


def _write_model_config(config: Any, folder: Path) -> None:
    data = config.to_dict()
    data.pop("quantization_config", None)  # the saved model is not quantised
    data.pop("_name_or_path", None)
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# loading


def base_model_args(folder: Path) -> dict:
    """The ``model:`` section the adapters were trained on (llmtune_config.yaml beside them, or in
    the run folder above ``adapter/``), else just the base named in ``adapter_config.json``."""
    from llmtune.config import CONFIG_FILENAME, read_yaml

    for candidate in (folder / CONFIG_FILENAME, folder.parent / CONFIG_FILENAME):
        if candidate.is_file():
            section = read_yaml(candidate).get("model") or {}
            if section.get("name_or_path"):
                return {k: section.get(k) for k in ("name_or_path", "revision", "gguf_file", "trust_remote_code")}
    try:
        base = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise LlmtuneError(f"{folder / ADAPTER_CONFIG} is unreadable: {exc}") from exc
    if not base:
        raise LlmtuneError(f"{folder / ADAPTER_CONFIG} does not name its base model (base_model_name_or_path)")
    return {"name_or_path": base}


def load_trained(
    location: str | Path, auto_class: str, training: bool = False, merge: bool = False, **kwargs: Any
) -> Any:
    """Load an adapters-only folder: the base model (with the trained config), the adapters on top.

    ``merge=True`` (or ``training``: a run starting from the folder) returns the merged plain model;
    otherwise a ``PeftModel`` ready for evaluation. ``kwargs`` go to ``from_pretrained``.
    """
    from llmtune.config import ModelArgs
    from llmtune.modeling import load_pretrained

    peft = _import_peft()
    folder = Path(location)
    args = base_model_args(folder)
    base = args["name_or_path"]
    if Path(str(base)).expanduser().resolve() == folder.resolve():
        raise LlmtuneError(f"the adapters in {folder} name their own folder as base model")
    saved = folder / MODEL_CONFIG_FILE
    if saved.is_file():
        from transformers import AutoConfig

        kwargs.setdefault(
            "config", AutoConfig.from_pretrained(str(saved), trust_remote_code=bool(args.get("trust_remote_code")))
        )
        config = kwargs["config"]
        for key in [k for k in kwargs if k != "config" and hasattr(config, k)]:
            setattr(config, key, kwargs.pop(key))  # task settings (num_labels...) go on the config
    # The base loads like a training run's model (revision, GGUF de-quantisation), in fp32.
    base_args = ModelArgs(**{k: v for k, v in args.items() if v is not None and k != "name_or_path"})
    try:
        model = load_pretrained(base, base_args, auto_class, training=True, **kwargs)
    except LlmtuneError as exc:
        raise LlmtuneError(f"the base model of the adapters in {folder} cannot be loaded: {exc}") from exc
    try:
        model = peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, OSError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlmtuneError(f"the adapters in {folder} do not fit base model '{base}': {text}") from exc
    if merge or training:
        if training:
            echo(f"llmtune: {folder} holds adapters: merged into base '{base}' before training")
        return model.merge_and_unload()
    return model


def unwrap(model: Any) -> Any:
    """The plain transformers model under a ``PeftModel`` (adapters still in place)."""
    return model.get_base_model() if is_peft_model(model) else model
