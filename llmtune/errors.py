"""User-facing errors.

Anything the user can fix (a flag, a file, a column, a recipe key) raises :class:`LlmtuneError`.
The CLI turns it into one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class LlmtuneError(Exception):
    """A problem the user can fix. The message names the culprit and the fix."""

    exit_code = 2


class ConfigError(LlmtuneError):
    """One or more problems in a recipe, ``--set`` override or flag, reported together."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        if len(self.problems) == 1:
            msg = f"{where}{self.problems[0]}"
        else:
            msg = f"{where}{len(self.problems)} config problems: " + "; ".join(self.problems)
        super().__init__(msg)
