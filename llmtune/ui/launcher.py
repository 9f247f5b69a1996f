"""The Launch page: a form built from the typed config, checked as ``--dry-run`` checks it, and the
runs it starts as ordinary ``python -m llmtune`` processes (stop = SIGTERM, resume = ``--resume auto``).

The form's fields, types, bounds and choices are read from the config dataclasses
(:data:`llmtune.config.SECTIONS` and the task's ``Options``) and their :func:`~llmtune.config.bounded`
/ :func:`~llmtune.config.choice` declarations: the same ones the CLI validates with. Validation is
:func:`llmtune.resolve.load_config` itself; each problem is shown by the field whose key it names.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Any

from llmtune.errors import ConfigError, LlmtuneError, problem_key

#: where the UI writes the stdout/stderr of the runs it starts (inside the runs directory)
LOG_DIR = ".llmtune-ui"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: config keys the form leaves out: set by the launch itself (output folder, resume) or not values
_NOT_IN_FORM = {"train.output_dir", "train.resume", "train.overwrite", "train.progress"}


def _type_name(tp: Any) -> str:
    """bool, int, float, str, list or dict for a field's annotation (``X | None`` -> X)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if type(None) in typing.get_args(tp) and args else tp
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        return "list"
    if origin is dict or base is dict:
        return "dict"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(base, "str")


def _fields(cls: type, prefix: str, values: Any) -> list[dict]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        if key in _NOT_IN_FORM:
            continue
        bounds, choices = f.metadata.get("bounds"), f.metadata.get("choices")
        tp = hints[f.name]
        item: dict[str, Any] = {
            "key": key,
            "type": _type_name(tp),
            "optional": type(None) in typing.get_args(tp),
            "value": getattr(values, f.name, None),
        }
        if bounds is not None:
            item["bounds"] = {k: getattr(bounds, k) for k in ("gt", "ge", "lt", "le") if getattr(bounds, k) is not None}
            item["bounds"]["special"] = list(bounds.special)
            item["bounds_text"] = bounds.describe()
        if choices:
            item["choices"] = [c for c in choices if c is not None]
        out.append(item)
    return out


def recipe_form(recipe: str) -> dict:
    """The recipe's resolved values as form fields, section by section."""
    from llmtune.config import SECTIONS
    from llmtune.recipes import find_recipe, recipe_description
    from llmtune.resolve import load_config
    from llmtune.tasks import get_task

    cfg = load_config(recipe=recipe)
    sections = {name: _fields(cls, name, getattr(cfg, name)) for name, cls in SECTIONS.items()}
    sections["options"] = _fields(get_task(cfg.task).Options, "options", cfg.options)
    return {
        "recipe": recipe,
        "task": cfg.task,
        "description": recipe_description(find_recipe(recipe)),
        "sections": sections,
        "default_name": Path(cfg.train.output_dir or cfg.task).name,
    }


def _set_items(values: dict[str, Any]) -> list[str]:
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


def check(recipe: str, values: dict[str, Any]) -> dict:
    """``--dry-run``'s resolution of recipe + values: the resolved YAML, or problems by key."""
    from llmtune.recipes import recipe_defaults_note, task_defaults_note
    from llmtune.resolve import load_config

    try:
        cfg = load_config(recipe=recipe, sets=_set_items(values))
    except ConfigError as exc:
        problems = [{"key": problem_key(p), "message": p} for p in exc.problems]
        return {"ok": False, "problems": problems, "error": str(exc)}
    except LlmtuneError as exc:
        return {"ok": False, "problems": [{"key": None, "message": str(exc)}], "error": str(exc)}
    notes = [n for n in (recipe_defaults_note(cfg), task_defaults_note(cfg)) if n]
    return {"ok": True, "yaml": cfg.to_yaml(), "notes": notes, "task": cfg.task}


def _command_for(task: str) -> str:
    from llmtune.tasks import get_task

    return "pretrain" if get_task(task).family == "lm" else "finetune"


@dataclasses.dataclass
class Launched:
    name: str
    folder: Path
    log: Path
    argv: list[str]
    proc: subprocess.Popen
    started: float = dataclasses.field(default_factory=time.time)

    def state(self) -> dict:
        code = self.proc.poll()  # also reaps the child: a zombie would look alive to report's pid check
        return {
            "name": self.name,
            "pid": self.proc.pid,
            "returncode": code,
            "running": code is None,
            "argv": self.argv,
            "log": self.log.name,
            "started": self.started,
        }


class Launcher:
    """The processes this UI started, by run id (the folder relative to the runs directory)."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.procs: dict[str, Launched] = {}
        self.lock = threading.Lock()

    def poll(self) -> dict[str, dict]:
        with self.lock:
            return {rid: p.state() for rid, p in self.procs.items()}

    def log_tail(self, rid: str, chars: int = 4000) -> str:
        launched = self.procs.get(rid)
        path = launched.log if launched else self.root / LOG_DIR / f"{rid.replace('/', '__')}.log"
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - chars))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _spawn(self, rid: str, argv: list[str]) -> Launched:
        logs = self.root / LOG_DIR
        logs.mkdir(exist_ok=True)
        log = logs / f"{rid.replace('/', '__')}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"$ {' '.join(argv)}\n")
            fh.flush()
            proc = subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.root
            )
        launched = Launched(rid, self.root / rid, log, argv, proc)
        with self.lock:
            self.procs[rid] = launched
        return launched

    def _busy(self, rid: str) -> bool:
        launched = self.procs.get(rid)
        return launched is not None and launched.proc.poll() is None

    def start(self, recipe: str, name: str, values: dict[str, Any]) -> dict:
        """Check like ``--dry-run``, then start ``llmtune finetune|pretrain --recipe R --output-dir
        RUNS/NAME --set k=v ...``."""
        if not _NAME_RE.match(name or ""):
            return {
                "ok": False,
                "problems": [{"key": "name", "message": f"run name {name!r}: use letters, digits, '.', '_' or '-'"}],
            }
        folder = self.root / name
        if folder.exists() or self._busy(name):
            return {
                "ok": False,
                "problems": [
                    {"key": "name", "message": f"{name} already exists in the runs directory: pick another name"}
                ],
            }
        checked = check(recipe, values)
        if not checked["ok"]:
            return checked
        argv = [sys.executable, "-m", "llmtune", _command_for(checked["task"]), "--recipe", recipe]
        argv += ["--output-dir", str(folder), "--set", "train.progress=plain"]
        for item in _set_items(values):
            argv += ["--set", item]
        launched = self._spawn(name, argv)
        return {"ok": True, "id": name, "pid": launched.proc.pid}

    def stop(self, rid: str, status: dict) -> dict:
        """SIGTERM: llmtune saves a checkpoint and exits (the run can be resumed)."""
        launched = self.procs.get(rid)
        if launched is not None and launched.proc.poll() is None:
            launched.proc.send_signal(signal.SIGTERM)
            return {"ok": True, "pid": launched.proc.pid}
        import socket

        pid = status.get("pid")
        here = status.get("host") == socket.gethostname()
        if status.get("status") in ("running", "training-done") and here and isinstance(pid, int) and pid > 0:
            try:
                os.kill(pid, signal.SIGTERM)  # a run started elsewhere on this machine (its run_status.json pid)
                return {"ok": True, "pid": pid}
            except ProcessLookupError:
                pass
        return {"ok": False, "error": f"{rid} is not running"}

    def resume(self, rid: str, folder: Path, task: str) -> dict:
        """Relaunch from the run's saved config with ``--resume auto`` (the newest checkpoint)."""
        from llmtune.config import CONFIG_FILENAME

        if self._busy(rid):
            return {"ok": False, "error": f"{rid} is still running"}
        argv = [sys.executable, "-m", "llmtune", _command_for(task), "--recipe", str(folder / CONFIG_FILENAME)]
        argv += ["--output-dir", str(folder), "--resume", "auto", "--set", "train.progress=plain"]
        launched = self._spawn(rid, argv)
        return {"ok": True, "id": rid, "pid": launched.proc.pid}

    def close(self) -> None:
        """Runs keep going when the UI stops (they are ordinary llmtune processes); reap the finished."""
        for launched in self.procs.values():
            launched.proc.poll()
