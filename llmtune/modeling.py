"""Tokenizer and model loading through ``AutoTokenizer`` / ``AutoModel*``, with one-line errors.

Also decides, before ``transformers``/``datasets`` are imported, whether the Hugging Face Hub is
reachable: when it is not, offline mode is switched on so cached models still load and missing
ones fail at once instead of after a minute of retries.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError, one_line
from llmtune.paths import resolve_location

HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def set_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    # Modules imported earlier in this process read the variable at import time.
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    ds_config = sys.modules.get("datasets.config")
    if ds_config is not None:
        ds_config.HF_HUB_OFFLINE = True


def prepare_hub_access(*specs: str | None) -> None:
    """Switch to offline mode when some spec needs the Hub and the Hub cannot be reached."""
    from llmtune.data import is_local_spec

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        set_offline()
        return
    if any(s and not is_local_spec(s) for s in specs) and not hub_reachable():
        set_offline()


# Files that make a folder a model: its config, weights, tokenizer. (GGUF files hold all three.)
CONFIG_FILES = ("config.json", "adapter_config.json")
WEIGHT_PATTERNS = (
    "*.safetensors", "pytorch_model*.bin", "adapter_model.bin", "tf_model.h5", "flax_model.msgpack", "*.gguf",
)  # fmt: skip
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model",
    "sentencepiece.bpe.model", "source.spm",
)  # fmt: skip
# JSON files transformers reads from a model folder: a corrupt one gets named, not a parser error
JSON_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
    "adapter_config.json", "added_tokens.json", "preprocessor_config.json", "model.safetensors.index.json",
)  # fmt: skip
FIX = "re-download or re-export it (save_pretrained)"


def _found(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    if not names:
        return "it is empty"
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"found: {shown}"


def safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is unreadable (bad header, truncated data), or None.

    Reads the header only (8-byte length + JSON), like ``safetensors`` does, and checks the file
    is as long as the tensors it declares: a partial download fails here, not deep in loading.
    """
    import json

    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"it has {size} bytes, too few for a safetensors header (truncated)"
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                return f"its header declares {n} bytes but the file has {size} (truncated or not safetensors)"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        return f"its header is unreadable ({one_line(exc)})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"it has {size} bytes but its header declares {need} (truncated: the download or save was cut short)"
    return None


def folder_problem(folder: Path, needs: tuple[str, ...], spec: str, flag: str = "--model") -> str | None:
    """What is wrong with a local model folder for ``needs`` (config / weights / tokenizer), or None.

    Corrupt JSON files and truncated safetensors are named with the fix; a folder missing what
    is needed says what it lacks and what it holds (e.g. a data folder passed as a model).
    """
    import json

    for name in JSON_FILES:
        path = folder / name
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                return f"{path} is not UTF-8 text: the file is corrupt; {FIX}"
            except json.JSONDecodeError as exc:
                return (
                    f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): the file is "
                    f"corrupt or partial; {FIX}"
                )
    has_gguf = any(folder.glob("*.gguf"))
    weights = [p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)]
    lacking = {
        "config": not has_gguf and not any((folder / n).is_file() for n in CONFIG_FILES),
        "weights": not weights,
        "tokenizer": not has_gguf and not any((folder / n).is_file() for n in TOKENIZER_FILES),
    }
    names = {
        "config": "config.json",
        "weights": "model weights (model.safetensors or pytorch_model.bin)",
        "tokenizer": "tokenizer files (tokenizer.json, or tokenizer_config.json with a vocabulary)",
    }
    if any(lacking[n] for n in needs):
        if all(lacking.values()) and flag != "--tokenizer":  # nothing of a model: an empty or a data folder
            what, missing = "model", list(names.values())
        else:
            what = "model" if "weights" in needs or "config" in needs else "tokenizer"
            missing = [names[n] for n in needs if lacking[n]]
        lacks = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " or " + missing[-1]
        return f"{flag} {spec}: folder {folder} is not a {what} folder: it has no {lacks} ({_found(folder)})"
    if "weights" in needs:
        for path in weights:
            if path.suffix == ".safetensors":
                reason = safetensors_problem(path)
                if reason:
                    return f"model weights {path} are corrupt: {reason}; {FIX}"
    return None


def check_folder(spec: str, location: str, needs: tuple[str, ...], flag: str = "--model") -> None:
    """Raise a one-line error when ``location`` is a local folder unfit for ``needs``."""
    folder = Path(location).expanduser()
    if folder.is_dir():
        problem = folder_problem(folder, needs, spec, flag)
        if problem:
            raise LlmtuneError(problem)


def hub_error(what: str, spec: str, exc: Exception) -> LlmtuneError:
    text = one_line(exc) if str(exc).strip() else type(exc).__name__
    folder = Path(str(resolve_location(spec))).expanduser()
    if folder.is_dir():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        if ggufs and not (folder / "config.json").is_file() and "gguf" not in text.lower():
            return LlmtuneError(
                f"folder {spec} holds GGUF weights ({', '.join(ggufs)}), not a transformers model: pass "
                f"--gguf-file {ggufs[0]} (or --set model.gguf_file={ggufs[0]})"
            )
        # A local folder: missing or unreadable files, not the Hub.
        needs = ("tokenizer",) if what == "tokenizer" else ("config", "weights") if what == "model" else ("config",)
        problem = folder_problem(folder, needs, spec)
        if problem:
            return LlmtuneError(problem)
        return LlmtuneError(f"could not load the {what} from folder {spec}: {text}")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in text.lower() or "couldn't connect" in text.lower():
        return LlmtuneError(
            f"{what} '{spec}' is not a local folder and the Hugging Face Hub is unreachable: pass a local model "
            f"folder with --model (and a local file with --dataset), or try the offline demo: "
            f"llmtune finetune --recipe sentiment-demo"
        )
    if "does not appear to have a file named" in text or "is not a valid model identifier" in text:
        return LlmtuneError(f"{what} '{spec}' not found: {text}")
    return LlmtuneError(f"could not load {what} '{spec}': {text}")


def model_location(spec: str | None, flag: str = "--model") -> str:
    if not spec:
        raise LlmtuneError(f"no model given: pass {flag} (a Hub id or a local folder)")
    location = resolve_location(spec)
    path = Path(location).expanduser()
    if path.exists():
        if path.is_file():
            raise LlmtuneError(f"{flag} {spec} is a file: pass the folder that holds config.json")
        return str(path)
    if location.startswith((".", "/", "~")) or location.count("/") > 1:
        raise LlmtuneError(f"model folder not found: {location} ({flag}): check the path")
    return location


def hub_kwargs(cfg_model: Any = None) -> dict[str, Any]:
    """``from_pretrained`` options shared by config, tokenizer and weights: ``model.revision``,
    ``model.gguf_file`` and ``model.trust_remote_code``. Every command that loads a model
    (finetune, pretrain, eval, and what builds on this module) passes them the same way."""
    if cfg_model is None:
        return {}
    extra: dict[str, Any] = {"trust_remote_code": bool(cfg_model.trust_remote_code)}
    if cfg_model.revision:
        extra["revision"] = cfg_model.revision
    if cfg_model.gguf_file:
        extra["gguf_file"] = cfg_model.gguf_file
    return extra


def load_tokenizer(spec: str, cfg_model: Any = None, **kwargs: Any) -> Any:
    """The tokenizer of ``spec`` (a folder, Hub id or ``package:``), with ``cfg_model``'s options.

    A tokenizer given separately (``model.tokenizer``) is a folder of its own: the GGUF file and
    revision belong to the model, so they apply only when ``spec`` is the model itself.
    """
    from transformers import AutoTokenizer

    location = model_location(spec)
    extra = hub_kwargs(cfg_model)
    if cfg_model is not None and cfg_model.tokenizer and spec == cfg_model.tokenizer:
        extra = {"trust_remote_code": extra["trust_remote_code"]}
    separate = cfg_model is not None and cfg_model.tokenizer and spec == cfg_model.tokenizer
    check_folder(spec, location, ("tokenizer",), "--tokenizer" if separate else "--model")
    try:
        return AutoTokenizer.from_pretrained(location, **extra, **kwargs)
    except Exception as exc:  # OSError, ValueError, json / tokenizers (Rust) errors on corrupt files
        if not isinstance(exc, (OSError, ValueError)) and not Path(location).is_dir():
            raise
        raise hub_error("tokenizer", spec, exc) from exc


def load_config(spec: str, cfg_model: Any = None) -> Any:
    """The ``PretrainedConfig`` of a pretrained model (a GGUF file's config too)."""
    from transformers import AutoConfig

    location = model_location(spec)
    try:
        return AutoConfig.from_pretrained(location, **hub_kwargs(cfg_model))
    except (OSError, ValueError) as exc:
        raise hub_error("model", spec, exc) from exc


def load_pretrained(
    spec: str,
    model_args: Any,
    auto_class: str,
    *,
    training: bool = False,
    quantization: dict | None = None,
    state: dict | None = None,
    **kwargs: Any,
) -> Any:
    """Load full pretrained weights with ``transformers.<auto_class>`` from ``spec``.

    The same options for every command: ``model_args`` (a :class:`llmtune.config.ModelArgs`) gives
    ``revision``, ``gguf_file`` (unpacked to float32: trainable, and saved as a plain safetensors
    model) and ``trust_remote_code``; its ``config_overrides`` apply when ``training`` (they change
    the architecture's settings). ``quantization`` holds the 4-bit ``from_pretrained`` arguments
    of QLoRA (:func:`llmtune.adapters.quantization_kwargs`). When training, the weights the
    checkpoint lacks go to ``state["new_weights"]``. Adapters-only folders are loaded by
    :func:`llmtune.loading.load_model`, which calls this for their base.
    """
    import torch
    import transformers

    location = model_location(spec)
    cls = getattr(transformers, auto_class)
    extra: dict[str, Any] = {**hub_kwargs(model_args), "dtype": torch.float32}
    extra.update(quantization or {})
    if model_args.gguf_file:
        from transformers import GgufConfig

        extra["quantization_config"] = GgufConfig(dequantize=True)
    check_folder(spec, location, ("config", "weights"))
    if training and model_args.config_overrides:
        config = load_config(spec, model_args)
        apply_config_overrides(config, model_args.config_overrides)
        # With an explicit config, from_pretrained hands leftover kwargs to the model's __init__:
        # config attributes the task passes (num_labels, id2label, problem_type...) go on the config.
        for key in [k for k in kwargs if hasattr(config, k)]:
            setattr(config, key, kwargs.pop(key))
        extra["config"] = config
    extra.update(kwargs)
    try:
        model, info = cls.from_pretrained(location, output_loading_info=True, **extra)
        if model_args.gguf_file:
            drop_gguf_quantizer(model)
        if training and state is not None:
            # Weights the checkpoint lacks (a new head, BERT's pooler...): adapters train them in full.
            state["new_weights"] = sorted(info.get("missing_keys") or ())
        return model
    except OSError as exc:
        raise hub_error("model", spec, exc) from exc
    except (ValueError, RuntimeError, TypeError) as exc:
        if quantization:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LlmtuneError(
                f"bitsandbytes cannot quantise model '{spec}' to 4 bits ({text}): drop peft.load_in_4bit"
            ) from exc
        if isinstance(exc, RuntimeError) and "PytorchStreamReader" in str(exc):
            raise LlmtuneError(
                f"could not read the weights of model '{spec}': {one_line(exc)}; if a file there is "
                f"corrupt or partial, {FIX}"
            ) from exc
        if not isinstance(exc, ValueError):
            raise
        raise LlmtuneError(f"model '{spec}' cannot be loaded as {auto_class}: {one_line(exc)}") from exc
    except Exception as exc:  # SafetensorError, torch.load's unpickling errors on a cut .bin, ...
        if type(exc).__name__ not in ("SafetensorError", "UnpicklingError", "BadZipFile", "EOFError"):
            raise
        raise LlmtuneError(
            f"could not read the weights of model '{spec}': {one_line(exc)}; if a file there is corrupt "
            f"or partial, {FIX}"
        ) from exc


def drop_gguf_quantizer(model: Any) -> None:
    """Forget the GGUF "quantizer" of a fully de-quantized model.

    transformers keeps it attached even when every weight was unpacked to float32, and then the
    Trainer refuses full fine-tuning ("purely quantized model") and ``save_pretrained`` refuses
    to serialise. With ``GgufConfig(dequantize=True)`` no packed GGUF layer remains, so the
    model is an ordinary float model.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = str(getattr(getattr(quantizer, "quantization_config", None), "quant_method", ""))
    if quantizer is None or not method.lower().endswith("gguf"):
        return
    if getattr(quantizer, "packed_modules", None):
        raise LlmtuneError("the GGUF model kept packed (quantized) layers: it cannot be fine-tuned as a float model")
    quantizer.remove_quantization_config(model)


def tokenizer_max_length(tokenizer: Any) -> int:
    """The tokenizer's ``model_max_length``, or a huge number when it is unset (a 1e30 sentinel)."""
    limit = getattr(tokenizer, "model_max_length", None) or 10**9
    return int(limit) if limit < 10**8 else 10**9


def max_positions(config: Any) -> int | None:
    """The positions a model takes (``max_position_embeddings`` and its aliases), None if unknown.

    Composite configs (a vision-language model, say) keep them on their text config."""
    candidates = [config]
    text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
    if text is not config:
        candidates.insert(0, text)
    for cfg in candidates:
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
                    return value - 2  # positions start after the padding index
                return value
    return None


def model_architecture(m: Any) -> Any:
    """The ``PretrainedConfig`` for a randomly initialised model (``model.config``).

    ``model.config`` is a size preset (:mod:`llmtune.presets`), a folder holding config.json, a
    config.json file, ``builtin:<name>``, or a Hub config name. ``model.config_overrides`` apply.
    """
    from transformers import AutoConfig

    from llmtune.presets import get_preset, preset_names

    preset = get_preset(m.config)
    if preset is not None:
        model_type = preset.pop("model_type")
        config = AutoConfig.for_model(model_type, **preset)
    else:
        location = resolve_location(m.config)
        path = Path(location).expanduser()
        if path.exists() or location.startswith((".", "/", "~")) or location.endswith(".json"):
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise LlmtuneError(f"model config not found: {path} (model.config / --model-config)")
        try:
            config = AutoConfig.from_pretrained(
                str(path) if path.exists() else location, trust_remote_code=m.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise LlmtuneError(
                f"model.config '{m.config}' is not a size preset ({', '.join(preset_names())}), a readable "
                f"config.json, or a Hub config reachable now: {one_line(exc)}"
            ) from exc
    apply_config_overrides(config, m.config_overrides)
    return config


def apply_config_overrides(config: Any, overrides: dict | None) -> None:
    """Set ``model.config_overrides`` on a config; keys the architecture does not have are refused."""
    unknown = [k for k in (overrides or {}) if not hasattr(config, k)]
    if unknown:
        raise LlmtuneError(
            f"model.config_overrides: {', '.join(sorted(unknown))} not in the {config.model_type} config; "
            f"valid keys include: {', '.join(sorted(k for k in config.to_dict() if not k.startswith('_'))[:40])}"
        )
    for key, value in (overrides or {}).items():
        setattr(config, key, value)


def model_from_config(ctx: Any, auto_class: str, config: Any = None) -> Any:
    """A randomly initialised ``transformers.<auto_class>`` sized to the tokenizer's vocabulary,
    with the tokenizer's special-token ids."""
    import torch
    import transformers

    config = config if config is not None else model_architecture(ctx.cfg.model)
    tok = ctx.tokenizer
    config.vocab_size = len(tok)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(tok, name, None)
        if value is not None:
            setattr(config, name, value)
    cls = getattr(transformers, auto_class)
    return cls.from_config(config, dtype=torch.float32, trust_remote_code=ctx.cfg.model.trust_remote_code)


def from_config_problems(cfg: Any) -> list[str]:
    """Config checks shared by every task that can start from a randomly initialised model."""
    from llmtune.presets import near_preset, preset_names

    m, p = cfg.model, []
    if m.config and m.name_or_path:
        p.append(
            "set model.name_or_path (--model, pretrained weights) or model.config (--model-config, random init), "
            "not both"
        )
    if m.config:
        typo = near_preset(m.config)
        if typo:
            p.append(
                f"unknown preset '{m.config}' (model.config); did you mean '{typo}'? presets: {', '.join(preset_names())}"
            )
        if not m.tokenizer:
            p.append(
                "a randomly initialised model (model.config / --model-config) needs a tokenizer: pass --tokenizer DIR "
                "(train one with `llmtune tokenizer train`)"
            )
    return p
