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

from llmtune.errors import LlmtuneError
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


def _is_pathlike(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").split("/", 1)[-1] or Path(spec).exists()


def _hub_error(what: str, spec: str, exc: Exception) -> LlmtuneError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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


def load_tokenizer(spec: str, cfg_model: Any = None, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    location = model_location(spec)
    extra = {}
    if cfg_model is not None:
        extra["trust_remote_code"] = cfg_model.trust_remote_code
        if cfg_model.revision:
            extra["revision"] = cfg_model.revision
        if cfg_model.gguf_file and not cfg_model.tokenizer:
            extra["gguf_file"] = cfg_model.gguf_file
    try:
        return AutoTokenizer.from_pretrained(location, **extra, **kwargs)
    except (OSError, ValueError) as exc:
        raise _hub_error("tokenizer", spec, exc) from exc


def load_model(ctx: Any, auto_class: str, **kwargs: Any) -> Any:
    """Load pretrained weights with ``transformers.<auto_class>`` from ``ctx.model_path``."""
    import torch
    import transformers

    cfg = ctx.cfg.model
    cls = getattr(transformers, auto_class)
    extra: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code, "dtype": torch.float32}
    if cfg.revision and ctx.training:
        extra["revision"] = cfg.revision
    if cfg.gguf_file and ctx.training:
        extra["gguf_file"] = cfg.gguf_file
    extra.update(cfg.config_overrides if ctx.training else {})
    extra.update(kwargs)
    location = model_location(ctx.model_path)
    try:
        return cls.from_pretrained(location, **extra)
    except OSError as exc:
        raise _hub_error("model", ctx.model_path, exc) from exc
    except ValueError as exc:
        text = str(exc).strip().splitlines()[0]
        raise LlmtuneError(f"model '{ctx.model_path}' cannot be loaded as {auto_class}: {text}") from exc
