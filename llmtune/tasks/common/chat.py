"""Chat conversations for causal-LM tasks (sft, dpo): templates, messages, rendering.

Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError, one_line

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

# Named chat templates for tokenizers without one (Jinja, as in tokenizer_config.json).
CHAT_TEMPLATES = {
    # ChatML (OpenAI, Qwen, SmolLM2): <|im_start|>role\ncontent<|im_end|>\n
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # No markup: every non-assistant turn is followed by a newline; the EOS appended to each
    # answer ends it. For base models whose tokenizer lacks chat tokens.
    "plain": (
        "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ message['content'] }}"
        "{% if not loop.last %}{{ '\\n' }}{% endif %}{% else %}{{ message['content'] + '\\n' }}{% endif %}{% endfor %}"
    ),
}


def chat_template_problem(tpl: str | None) -> str | None:
    """``options.chat_template`` must be a shipped template name or a Jinja string (sft, dpo)."""
    if tpl is not None and tpl not in CHAT_TEMPLATES and "{{" not in tpl and "{%" not in tpl:
        return f"options.chat_template '{tpl}' is neither a template name ({', '.join(CHAT_TEMPLATES)}) nor Jinja"
    return None


def chat_data_problems(cfg: Any, task: str, instead: str, streaming: str = "") -> list[str]:
    """The config checks every chat-data task shares: ``options.chat_template``, no streaming
    (``streaming``: why, appended to the message), and no ``data.*_column`` keys (``instead``: the
    task's own column options)."""
    from llmtune.tasks.base import unused_data_columns

    p = [problem] if (problem := chat_template_problem(cfg.options.chat_template)) else []
    if cfg.data.streaming:
        p.append(f"data.streaming is not supported by {task}{streaming}: drop it")
    p.extend(unused_data_columns(cfg, task, instead))
    return p


def apply_chat_template_option(tokenizer: Any, wanted: str | None) -> bool:
    """Set ``options.chat_template`` on the tokenizer, or chatml when it has none (saved with the
    model, so inference renders chats the same way). True when chatml was the fallback."""
    if wanted is not None:
        tokenizer.chat_template = CHAT_TEMPLATES.get(wanted, wanted)
    elif not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATES["chatml"]
        return True
    return False


def normalize_messages(value: Any, column: str) -> list[dict]:
    """A messages cell as [{"role", "content"}], accepting ShareGPT's {"from", "value"}."""
    if not isinstance(value, list) or not value:
        raise LlmtuneError(f"column '{column}' must hold a non-empty list of messages, got {value!r:.80}")
    out = []
    for turn in value:
        if not isinstance(turn, dict):
            raise LlmtuneError(
                f"column '{column}': a message must be a mapping with role and content, got {turn!r:.80}"
            )
        role = turn.get("role") or turn.get("from")
        content = turn.get("content") if "content" in turn else turn.get("value")
        role = SHAREGPT_ROLES.get(str(role).lower(), role) if role is not None else None
        if not role:
            raise LlmtuneError(f"column '{column}': message without a role: {turn!r:.80}")
        out.append({"role": role, "content": "" if content is None else str(content)})
    return out


def render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja2 TemplateError (e.g. "roles must alternate") and friends
        text = one_line(exc) if str(exc).strip() else type(exc).__name__
        roles = "/".join(m["role"] for m in messages)
        raise LlmtuneError(
            f"the chat template cannot render a conversation with roles {roles or '(none)'}: {text}; "
            f"fix the data or choose options.chat_template (chatml, plain)"
        ) from exc


def segment_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of one rendered segment, without special tokens (as ``apply_chat_template`` does)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
