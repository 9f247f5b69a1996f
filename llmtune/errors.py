"""User-facing errors.

Anything the user can fix (a flag, a file, a column, a recipe key) raises :class:`LlmtuneError`.
The CLI turns it into one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import re

# A config key named in a problem: ``train.learning_rate``, ``options.block_size`` ...
_KEY_RE = re.compile(r"\b(?:model|data|train|options)\.[A-Za-z_]\w*")


class LlmtuneError(Exception):
    """A problem the user can fix. The message names the culprit and the fix."""

    exit_code = 2


def one_line(text: object, limit: int = 400) -> str:
    """A library message as one line: whitespace collapsed, never cut inside a sentence (a long
    message keeps its complete sentences up to ``limit`` characters)."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    cut = max(flat.rfind(". ", 0, limit), flat.rfind("; ", 0, limit))
    if cut > limit // 4:
        return flat[: cut + 1].rstrip(";") + " ..."
    return flat[:limit].rsplit(" ", 1)[0] + " ..."


def attribute(problem: str, origins: dict[str, tuple[str, str]]) -> str:
    """Name where the value a problem is about came from: the flag, the ``--set`` or the file.

    ``origins`` maps dotted keys to ``("flag", "--lr")``, ``("set", key)``, ``("file", path)`` or
    ``("default", task)`` (a default the task declares).
    The key is the first config key the problem mentions.
    """
    match = _KEY_RE.search(problem)
    origin = origins.get(match.group(0)) if match else None
    if origin is None and problem.startswith("unknown task"):
        origin, key = origins.get("task"), "task"
    elif origin is None:
        return problem
    else:
        key = match.group(0)
    kind, label = origin
    leading = problem.startswith(key)
    if kind == "flag":
        return f"{label} ({key}){problem[len(key) :]}" if leading else f"{problem} ({key} from {label})"
    if kind == "set":
        return f"--set {problem}" if leading else f"{problem} (from --set {key}=...)"
    if kind == "default":
        return f"{problem} ({key} is task {label}'s default: change it with --set {key}=...)"
    return f"{label}: {problem}"


class ConfigError(LlmtuneError):
    """One or more problems in a recipe, ``--set`` override or flag, reported together.

    With ``origins`` (where each key's value came from) every problem names its own source;
    otherwise ``source`` (a file) prefixes the message.
    """

    def __init__(
        self, problems: list[str], source: str | None = None, origins: dict[str, tuple[str, str]] | None = None
    ):
        self.problems = list(problems)
        self.source = source
        self.origins = origins
        if origins is not None:
            shown = [attribute(p, origins) for p in self.problems]
            where = ""
        else:
            shown = self.problems
            where = f"{source}: " if source else ""
        many = f"{len(shown)} config problems: " + "; ".join(shown)
        super().__init__(where + (shown[0] if len(shown) == 1 else many))


def problem_key(problem: str) -> str | None:
    """The config key a problem is about (the first one it names), e.g. for showing it by a form field."""
    match = _KEY_RE.search(problem)
    return match.group(0) if match else None
