"""Text generation, written once for ``predict``, ``eval``, ``generate``/``chat`` and ``serve``.

- :class:`GenerationSettings`: the sampling knobs (flags of ``generate``/``chat``, fields of a
  ``serve`` request), their range checks and the ``model.generate`` keyword arguments.
- :func:`generate_texts`: many prompts at once: sorted by length, left-padded batches,
  KV-cached ``model.generate``, results in input order with token counts and wall time.
- :func:`stream_text`: one prompt, pieces of text as they are produced (``TextIteratorStreamer``
  in a worker thread), cut at stop strings, cancellable (Ctrl-C in ``chat``, a client that
  disconnects from ``serve``).
- prompts: the chat template for chat models, plain continuation for base models.

Module level stays torch-free.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmtune.errors import LlmtuneError

# End-of-turn markers: stop ids when they are single tokens, cut from text when they are not.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    # 0 = greedy; with greedy=True the sampling knobs are ignored.
    temperature: float = 0.7
    top_p: float = 1.0
    # 0 = no top-k filtering.
    top_k: int = 0
    repetition_penalty: float = 1.0
    greedy: bool = False
    seed: int | None = None
    # Generation stops after any of these strings; the returned text ends before it.
    stop: list[str] = field(default_factory=list)

    @property
    def sampling(self) -> bool:
        return not self.greedy and self.temperature > 0

    def problems(self, names: dict[str, str] | None = None) -> list[str]:
        """Out-of-range values; ``names`` maps a field to how the user spelled it (flag or JSON key)."""

        def n(key: str) -> str:
            return (names or {}).get(key, "--" + key.replace("_", "-"))

        p = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            p.append(f"{n('max_new_tokens')} must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:  # NaN too
            p.append(f"{n('temperature')} must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:  # NaN too
            p.append(f"{n('top_p')} must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            p.append(f"{n('top_k')} must be >= 0 (0 = off), got {self.top_k}")
        if not self.repetition_penalty > 0:  # NaN too
            p.append(f"{n('repetition_penalty')} must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            p.append(f"{n('seed')} must be in 0 .. 2**32-1, got {self.seed}")
        if any(not s for s in self.stop):
            p.append(f"{n('stop')} strings must not be empty")
        return p

    def check(self, names: dict[str, str] | None = None) -> GenerationSettings:
        problems = self.problems(names)
        if problems:
            raise LlmtuneError("; ".join(problems))
        return self

    def generate_kwargs(self, model: Any, tokenizer: Any) -> dict:
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.sampling}
        if self.sampling:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # the model's own sampling defaults would only trigger "ignored flag" warnings
            kw.update(temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = self.repetition_penalty
        if not model.config.is_encoder_decoder:
            kw["eos_token_id"] = stop_token_ids(tokenizer, model)
            kw["num_beams"] = 1
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        kw["pad_token_id"] = pad
        return kw


@dataclass
class Generated:
    text: str
    prompt_tokens: int
    new_tokens: int
    # "stop": EOS or a stop string; "length": max_new_tokens reached.
    finish_reason: str


@dataclass
class GenerationRun:
    outputs: list[Generated]
    seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(o.new_tokens for o in self.outputs)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """EOS ids of the generation config and tokenizer, plus single-token end-of-turn markers."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        ids += value if isinstance(value, list) else ([value] if value is not None else [])
    vocab = tokenizer.get_vocab()
    ids += [vocab[marker] for marker in END_OF_TURN if marker in vocab]
    return list(dict.fromkeys(ids))


def cut_at_end_of_turn(text: str) -> str:
    """Generated text up to the first end-of-turn marker (when it is plain text, not special)."""
    for marker in END_OF_TURN:
        text = text.split(marker, 1)[0]
    return text.strip()


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# ---------------------------------------------------------------------------------------------
# prompts


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def max_prompt_tokens(model: Any, tokenizer: Any, max_new_tokens: int) -> int | None:
    """Room left for the prompt: the model's positions (or the tokenizer's limit) minus the answer."""
    from llmtune.modeling import max_positions, tokenizer_max_length

    limits = [n for n in (max_positions(model.config), tokenizer_max_length(tokenizer)) if n and n < 10**9]
    return max(1, min(limits) - max_new_tokens) if limits else None


def fit_conversation(tokenizer: Any, messages: list[dict], limit: int | None) -> list[dict]:
    """Drop the oldest turns (never a leading system message or the last one) until the rendered
    prompt fits in ``limit`` tokens."""
    messages = list(messages)
    while limit is not None and len(messages) > 1:
        ids = tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            break
        first = 1 if messages[0]["role"] == "system" else 0
        if first >= len(messages) - 1:
            break
        del messages[first]
    return messages


def chat_prompt(tokenizer: Any, messages: list[dict]) -> str:
    """The conversation rendered by the chat template, ending with the assistant's turn opening."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja2 errors ("roles must alternate", ...)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlmtuneError(f"the model's chat template cannot render these messages: {text}") from exc


def decode_answer(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True)


def finish_generated(
    tokenizer: Any, ids: Sequence[int], stops: set[int], settings: GenerationSettings, prompt_tokens: int
) -> Generated:
    """The answer in the new token ids ``ids``: cut after the first stop token, at a stop string
    and at an end-of-turn marker; finish reason "length" only when ``max_new_tokens`` was used up."""
    ids = list(ids)
    end = next((k for k, t in enumerate(ids) if t in stops), None)
    kept = ids if end is None else ids[: end + 1]
    text, stopped = cut_at_stop(decode_answer(tokenizer, kept), settings.stop)
    text = cut_at_end_of_turn(text)
    reason = "stop" if end is not None or stopped or len(kept) < settings.max_new_tokens else "length"
    return Generated(text, prompt_tokens, len(kept), reason)


# ---------------------------------------------------------------------------------------------
# batched generation


def model_device(model: Any) -> Any:
    return next(model.parameters()).device


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings,
    batch_size: int = 8,
    add_special_tokens: bool = False,
    max_input_tokens: int | None = None,
    progress: Any = None,
) -> GenerationRun:
    """Generate for every prompt: length-sorted, left-padded batches; results in input order.

    Decoder-only models continue each prompt (left padding keeps every prompt's last token next
    to the first new one); encoder-decoder models get the prompt as encoder input. The KV cache
    is on (``use_cache``): each new token costs one forward pass over one position per row.
    """
    import torch
    from transformers import set_seed

    from llmtune.inference.batching import sorted_batches

    prompts = list(prompts)
    outputs: list[Generated | None] = [None] * len(prompts)
    if settings.seed is not None:
        set_seed(settings.seed)
    encoder_decoder = bool(model.config.is_encoder_decoder)
    kwargs = settings.generate_kwargs(model, tokenizer)
    stops = set(stop_token_ids(tokenizer, model)) if not encoder_decoder else {tokenizer.eos_token_id}
    device = model_device(model)
    lengths = [len(p) for p in prompts]
    side, truncation_side = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = "left" if not encoder_decoder else "right"
    # a decoder continues the end of its prompt: cut long prompts at the start
    tokenizer.truncation_side = "left" if not encoder_decoder else truncation_side
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    try:
        for indices in sorted_batches(lengths, batch_size):
            chunk = [prompts[i] for i in indices]
            enc = tokenizer(
                chunk,
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special_tokens,
                truncation=max_input_tokens is not None,
                max_length=max_input_tokens,
            ).to(device)
            enc.pop("token_type_ids", None)
            prompt_length = 1 if encoder_decoder else enc["input_ids"].shape[1]
            criteria = stopping_criteria(tokenizer, settings, prompt_length)
            with torch.inference_mode():
                out = model.generate(**enc, **kwargs, stopping_criteria=criteria, use_cache=True)
            new = out[:, 1:] if encoder_decoder else out[:, enc["input_ids"].shape[1] :]
            prompt_counts = enc["attention_mask"].sum(-1).tolist()
            for j, i in enumerate(indices):
                outputs[i] = finish_generated(tokenizer, new[j].tolist(), stops, settings, int(prompt_counts[j]))
            if progress is not None:
                progress(len(indices))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, truncation_side
        model.train(was_training)
    return GenerationRun([o for o in outputs if o is not None], time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# streaming


class StopOnStrings:
    """A ``StoppingCriteria``: a row is done once its *generated* text holds a stop string.

    transformers' own ``stop_strings`` also match across the end of the prompt (a prompt ending
    in "e" stops at once on the stop string "ee"); OpenAI's ``stop`` and ours look at the answer only.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_length: int):
        self.tokenizer, self.stops, self.prompt_length = tokenizer, list(stops), prompt_length
        # enough trailing tokens to hold the longest stop string (a token is at least one character)
        self.window = max(len(s) for s in self.stops) + 2

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        new = input_ids[:, self.prompt_length :]
        tails = self.tokenizer.batch_decode(new[:, -self.window :], skip_special_tokens=True)
        done = [any(s in tail for s in self.stops) for tail in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def stopping_criteria(tokenizer: Any, settings: GenerationSettings, prompt_length: int, extra: Any = None) -> Any:
    from transformers import StoppingCriteriaList

    criteria = [StopOnStrings(tokenizer, settings.stop, prompt_length)] if settings.stop else []
    return StoppingCriteriaList([*criteria, *([extra] if extra is not None else [])])


class _Cancelled:
    """A ``StoppingCriteria`` that ends generation when its event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TextStream:
    """Iterate to get text pieces; ``finish_reason``/``new_tokens`` are set once it is exhausted.

    ``cancel()`` (from any thread) stops the generation at the next token.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompt: str,
        settings: GenerationSettings,
        add_special_tokens: bool = False,
        max_input_tokens: int | None = None,
    ):
        from transformers import TextIteratorStreamer, set_seed

        self.cancelled = threading.Event()
        self.finish_reason = "stop"
        self.new_tokens = 0
        self.settings = settings
        if settings.seed is not None:
            set_seed(settings.seed)
        truncation_side, tokenizer.truncation_side = tokenizer.truncation_side, "left"  # keep the newest text
        try:
            enc = tokenizer(
                [prompt],
                return_tensors="pt",
                add_special_tokens=add_special_tokens,
                truncation=max_input_tokens is not None,
                max_length=max_input_tokens,
            ).to(model_device(model))
        finally:
            tokenizer.truncation_side = truncation_side
        enc.pop("token_type_ids", None)
        self.prompt_tokens = int(enc["input_ids"].shape[1])
        self._streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = settings.generate_kwargs(model, tokenizer)
        kwargs["stopping_criteria"] = stopping_criteria(
            tokenizer, settings, self.prompt_tokens, _Cancelled(self.cancelled)
        )
        self._stops = set(stop_token_ids(tokenizer, model))
        self._error: BaseException | None = None
        self._output: Any = None

        def work() -> None:
            import torch

            try:
                with torch.inference_mode():
                    self._output = model.generate(**enc, **kwargs, streamer=self._streamer, use_cache=True)
            except BaseException as exc:  # re-raised in the consumer thread
                self._error = exc
                self._streamer.end()

        model.eval()
        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self.cancelled.set()

    def close(self) -> None:
        """Stop generating and wait for the worker (after Ctrl-C or a client that went away)."""
        self.cancel()
        self._thread.join()

    def __iter__(self) -> Iterator[str]:
        stops = [*self.settings.stop, *END_OF_TURN]
        hold = max(len(s) for s in stops) - 1
        text, sent, stopped = "", 0, False
        for piece in self._streamer:
            if stopped:
                continue  # drain: the worker finishes its current step
            text += piece
            cut, found = cut_at_stop(text, stops)
            if found:
                stopped = True
                self.cancel()
                if len(cut) > sent:
                    yield cut[sent:]
                sent = len(cut)
                continue
            safe = max(sent, len(text) - hold)  # a stop string may be starting at the end
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        self._thread.join()
        if self._error is not None:
            raise self._error
        if not stopped and len(text) > sent:
            yield text[sent:]
        self._finish(stopped)

    def _finish(self, stopped: bool) -> None:
        if self._output is None:
            return
        ids = self._output[0, self.prompt_tokens :].tolist()
        end = next((k for k, t in enumerate(ids) if t in self._stops), None)
        self.new_tokens = len(ids) if end is None else end + 1
        hit_limit = end is None and not stopped and self.new_tokens >= self.settings.max_new_tokens
        self.finish_reason = "length" if hit_limit and not self.cancelled.is_set() else "stop"
