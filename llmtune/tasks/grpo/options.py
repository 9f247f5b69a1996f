"""Options of the grpo task, the losses and the built-in rewards it offers.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: TRL's GRPO loss variants that llmtune offers (see the package doc for the normalisations)
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
#: built-in rewards (no code needed); see :mod:`llmtune.tasks.grpo.rewards`
BUILTIN_REWARDS = ("math_answer", "regex_format", "length")


@dataclass
class GRPOOptions:
    # The prompt: a column of strings or chat message lists; None = auto-detect (prompt, question,
    # problem, instruction, query, then messages: a chat up to its last user turn).
    prompt_column: str | None = None
    # A system message put first in every prompt that has none.
    system_prompt: str | None = None
    # Chat template: a name (chatml, plain), a Jinja template string, or None = the tokenizer's own.
    chat_template: str | None = None
    # Reward functions, summed with reward_weights: built-ins (math_answer, regex_format, length),
    # Python references (path/to/file.py:function or package.module:function) called as
    # fn(prompts, completions, **columns) -> one float per completion, and reward-model folders
    # (saved by --task reward).
    rewards: list[str] = field(default_factory=lambda: ["math_answer"])
    # One weight per reward (None: all 1).
    reward_weights: list[float] | None = None
    # math_answer: the column holding the reference answer (a number, \boxed{..} or GSM8K's "#### 42").
    answer_column: str = "answer"
    # regex_format: the pattern a completion must contain (re.search): 1 if found, else 0.
    format_pattern: str = r"####\s*-?[\d.,]+|\\boxed\{[^{}]+\}"
    # length: completions of min..max tokens get 0, others minus their relative distance (at most -1);
    # None = [1, max_completion_length].
    length_range: list[int] | None = None
    # Sampling: completions per prompt (the group), their length, temperature and nucleus top-p.
    num_generations: int = 4
    max_completion_length: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    # KL penalty to the reference (the starting model): 0 = no reference model is kept.
    beta: float = 0.04
    loss_type: str = "grpo"
    # PPO-style clipping of the probability ratio.
    epsilon: float = 0.2
    # Divide each group's advantages by its reward std (Dr. GRPO turns this off).
    scale_rewards: bool = True
