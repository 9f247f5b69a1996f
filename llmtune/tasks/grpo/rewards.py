"""grpo reward functions: the built-ins, Python references, reward-model folders, and
:class:`RewardSet` (all of a run's rewards, called on a batch of completions with checks).

The contract (TRL's): ``fn(prompts, completions, **columns) -> list[float]``, ``prompts`` the
prompt cells as in the data (strings or message lists), ``completions`` the generated texts,
``columns`` every other data column (one value per completion) plus ``completion_ids``; one
number per completion. Module level stays torch-free.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.grpo.options import BUILTIN_REWARDS

_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_answer(text: str) -> str | None:
    """The final answer of a text: the last ``\\boxed{..}``, else what follows the last ``####``,
    else the last number; None when there is none."""
    text = str(text or "")
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1]
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        if tail:
            return tail.splitlines()[0]
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str | None) -> Any:
    """A comparable form: a float for numbers (``$1,200.`` -> 1200.0), else lower-cased text."""
    if answer is None:
        return None
    text = answer.strip().replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    text = text.removeprefix("\\text{").removesuffix("}") if text.startswith("\\text{") else text
    try:
        return float(text)
    except ValueError:
        numbers = _NUMBER.findall(text)
        if len(numbers) == 1 and text.replace(numbers[0], "").isalpha():  # "18dollars"
            return float(numbers[0].replace(",", ""))
        return text.lower() or None


def same_answer(predicted: Any, gold: Any) -> bool:
    if predicted is None or gold is None:
        return False
    if isinstance(predicted, float) and isinstance(gold, float):
        return math.isclose(predicted, gold, rel_tol=1e-6, abs_tol=1e-6)
    return predicted == gold


def math_answer(prompts: list, completions: list[str], answer_column: str = "answer", **columns: Any) -> list[float]:
    """1.0 when the completion's final answer equals the reference answer column's (both through
    :func:`extract_answer` and :func:`normalize_answer`), else 0.0."""
    golds = columns[answer_column]
    return [
        float(same_answer(normalize_answer(extract_answer(c)), normalize_answer(extract_answer(str(g)))))
        for c, g in zip(completions, golds, strict=True)
    ]


def regex_format(prompts: list, completions: list[str], pattern: str = "", **columns: Any) -> list[float]:
    """1.0 when ``pattern`` is found in the completion (``re.search``), else 0.0."""
    compiled = re.compile(pattern)
    return [float(compiled.search(c) is not None) for c in completions]


def length(prompts: list, completions: list[str], low: int = 1, high: int = 128, **columns: Any) -> list[float]:
    """0 for completions of ``low``..``high`` tokens, else minus the relative distance to the range
    (at most -1)."""
    out = []
    for ids in columns["completion_ids"]:
        n = len(ids)
        if n < low:
            out.append(-min(1.0, (low - n) / max(low, 1)))
        elif n > high:
            out.append(-min(1.0, (n - high) / max(high, 1)))
        else:
            out.append(0.0)
    return out


def builtin(name: str, options: Any) -> Any:
    """A built-in reward bound to the run's options."""
    if name == "math_answer":
        return lambda prompts, completions, **kw: math_answer(prompts, completions, options.answer_column, **kw)
    if name == "regex_format":
        return lambda prompts, completions, **kw: regex_format(prompts, completions, options.format_pattern, **kw)
    low, high = options.length_range or (1, options.max_completion_length)
    return lambda prompts, completions, **kw: length(prompts, completions, int(low), int(high), **kw)


def kind_of(spec: str) -> str:
    """``builtin``, ``python`` (``file.py:function`` / ``module:function``) or ``model`` (a folder)."""
    if spec in BUILTIN_REWARDS:
        return "builtin"
    if re.fullmatch(r"[^:]+\.py:\w+|[\w.]+:\w+", spec) and not Path(spec).is_dir():
        return "python"
    if Path(spec).exists() or "/" in spec or "\\" in spec:
        return "model"
    return "unknown"


def spec_problems(specs: list[str], weights: list[float] | None) -> list[str]:
    """Config-time problems with ``options.rewards`` / ``options.reward_weights``."""
    p = []
    if not specs:
        p.append("options.rewards is empty: name at least one reward function")
    for spec in specs:
        if kind_of(spec) == "unknown":
            p.append(
                f"options.rewards: unknown reward function '{spec}'; built-ins: {', '.join(BUILTIN_REWARDS)}, or "
                f"a Python reference (path/to/file.py:function, package.module:function), or a reward-model folder"
            )
    if len(set(specs)) != len(specs):
        p.append("options.rewards names a reward function twice: give it one weight in options.reward_weights")
    if weights is not None and len(weights) != len(specs):
        p.append(f"options.reward_weights has {len(weights)} values for {len(specs)} rewards in options.rewards")
    return p


def load_python(spec: str) -> Any:
    """The function named by ``path/to/file.py:function`` or ``package.module:function``."""
    import importlib
    import importlib.util

    where, name = spec.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise LlmtuneError(f"options.rewards: reward file '{where}' not found (in '{spec}')")
            module_spec = importlib.util.spec_from_file_location(f"llmtune_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except LlmtuneError:
        raise
    except Exception as exc:
        raise LlmtuneError(f"options.rewards: cannot import '{where}' ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise LlmtuneError(f"options.rewards: '{where}' has no function '{name}'")
    return fn


class RewardModel:
    """A reward-model folder (``--task reward``) as a reward function: it scores the prompt
    conversation followed by the completion, rendered with its own tokenizer's chat template."""

    def __init__(self, folder: str, max_length: int, device: Any):
        import json

        from llmtune.modeling import model_location

        location = Path(model_location(folder))
        config = location / "config.json"
        try:
            labels = json.loads(config.read_text(encoding="utf-8")).get("num_labels") if config.is_file() else None
            if labels is None and config.is_file():
                labels = len(json.loads(config.read_text(encoding="utf-8")).get("id2label") or {0: 0, 1: 1})
        except (OSError, ValueError):
            labels = None
        if labels != 1:
            raise LlmtuneError(
                f"options.rewards: '{folder}' is not a reward model (a folder saved by llmtune finetune --task reward, "
                f"with one output; {'found ' + str(labels) + ' outputs' if labels else 'no readable config.json'})"
            )
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(location))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(str(location)).to(device).eval()
        self.model.requires_grad_(False)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = max_length

    def __call__(self, prompts: list, completions: list[str], **columns: Any) -> list[float]:
        import torch

        from llmtune.tasks.common.chat import render

        tok, seqs = self.tokenizer, []
        for prompt, completion in zip(columns["prompt_messages"], completions, strict=True):
            text = render(tok, [*prompt, {"role": "assistant", "content": completion}])
            seqs.append(tok(text, add_special_tokens=False)["input_ids"][-self.max_length :])
        width = max(len(s) for s in seqs)
        device = next(self.model.parameters()).device
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        with torch.no_grad():
            return self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()


def reward_name(spec: str) -> str:
    """The short name a reward is logged under: the built-in's, the function's, the folder's."""
    if spec in BUILTIN_REWARDS:
        return spec
    if kind_of(spec) == "python":
        return spec.rsplit(":", 1)[1]
    return re.sub(r"\W+", "_", Path(spec.rstrip("/\\")).name) or "reward_model"


class RewardSet:
    """Every reward of a run: names, weights, and ``__call__`` -> a [N][F] list of rewards."""

    def __init__(self, options: Any, device: Any = "cpu", max_length: int = 1024):
        self.specs = list(options.rewards)
        self.weights = [float(w) for w in (options.reward_weights or [1.0] * len(self.specs))]
        names = [reward_name(s) for s in self.specs]
        self.names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
        self.functions = []
        for spec in self.specs:
            kind = kind_of(spec)
            if kind == "builtin":
                self.functions.append(builtin(spec, options))
            elif kind == "python":
                self.functions.append(load_python(spec))
            else:
                self.functions.append(RewardModel(spec, max_length, device))
        self.math_index = self.specs.index("math_answer") if "math_answer" in self.specs else None

    def __call__(self, prompts: list, completions: list[str], columns: dict) -> list[list[float]]:
        table = []
        for spec, fn in zip(self.specs, self.functions, strict=True):
            try:
                values = fn(prompts, completions, **columns)
            except LlmtuneError:
                raise
            except KeyError as exc:
                raise LlmtuneError(
                    f"reward function '{spec}' needs the data column {exc} (columns: "
                    f"{', '.join(k for k in columns if k not in ('completion_ids', 'prompt_messages'))})"
                ) from None
            except Exception as exc:
                raise LlmtuneError(f"reward function '{spec}' raised {type(exc).__name__}: {exc}") from None
            try:
                values = [float(v) for v in values]
            except (TypeError, ValueError):
                raise LlmtuneError(
                    f"reward function '{spec}' must return a list of numbers, one per completion; got {values!r:.80}"
                ) from None
            if len(values) != len(completions):
                raise LlmtuneError(
                    f"reward function '{spec}' returned {len(values)} values for {len(completions)} completions "
                    f"(one number per completion is the contract)"
                )
            if not all(math.isfinite(v) for v in values):
                raise LlmtuneError(f"reward function '{spec}' returned a value that is not a finite number")
            table.append(values)
        return [list(row) for row in zip(*table, strict=True)]
