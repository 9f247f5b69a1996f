"""Request scheduling for ``llmtune serve``: continuous batching of generation, micro-batching of
``/v1/predict``, and the counters behind ``/metrics``.

Generation: :class:`ContinuousBatcher` owns the model in one worker thread. A request is prefilled
alone (one forward pass over its prompt, no padding: its first token is what it gets alone), then
its KV cache joins the running batch, left-padded to the batch's length; every decode step is one
forward pass over one new position per row with the padding masked out and each row's own
position ids. A row that finishes (EOS, ``max_tokens``, a stop string, a client that went away)
leaves the batch at the next step, and the cache columns nobody needs any more are dropped.
Sampling is per row (each request keeps its own temperature, top-p, top-k, repetition penalty and
seed); greedy rows take the arg-max of the batch's logits at once.

Why our own scheduler and not transformers' continuous batching (``generate_batch`` /
``init_continuous_batching``, transformers 5.24): checked on this CPU with a 2-layer Llama built
from a config, its greedy tokens matched ``generate``, but 3 prompts x 20 tokens took 55 s (it
sizes a paged cache from the memory it finds and runs a scheduler built for CUDA streams), and one
``GenerationConfig`` holds for the whole manager, so requests could not carry their own
temperature / top-p / repetition penalty / seed / stop strings as OpenAI requests do. The loop
below is the KV-cached batched generation of :func:`~llmtune.inference.generation.generate_texts`
with rows that come and go.

Models whose cache is not a plain per-layer key/value cache (encoder-decoder models, sliding-window
or hybrid caches) are served one request at a time by ``generate_texts`` in the same worker.

Module level stays torch-free.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmtune.inference.generation import (
    END_OF_TURN,
    GenerationSettings,
    cut_at_stop,
    decode_answer,
    finish_generated,
    generate_texts,
    model_device,
    stop_token_ids,
)


class QueueFull(Exception):
    """More requests wait than ``--max-queue`` allows (HTTP 429)."""


# ---------------------------------------------------------------------------------------------
# metrics

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Counters and gauges in Prometheus' text format (written by hand: a dozen lines, no extra
    dependency for the ``serve`` extra)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.tokens = 0
        self.prompt_tokens = 0
        self.queue = 0
        self.batch = 0
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.ttft_n = 0
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) of the last 10 s of steps

    def request(self, endpoint: str, outcome: str) -> None:
        with self.lock:
            key = (endpoint, outcome)
            self.requests[key] = self.requests.get(key, 0) + 1

    def generated(self, n: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.tokens += n
            self.recent.append((now, n))
            while self.recent and self.recent[0][0] < now - 10:
                self.recent.popleft()

    def first_token(self, seconds: float) -> None:
        with self.lock:
            self.ttft_counts[bisect.bisect_left(TTFT_BUCKETS, seconds)] += 1
            self.ttft_sum += seconds
            self.ttft_n += 1

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self.lock:
            return sum(n for t, n in self.recent if t >= now - 10) / 10.0

    def render(self) -> str:
        rate = self.tokens_per_second()
        with self.lock:
            lines = [
                "# HELP llmtune_requests_total Requests by endpoint and outcome.",
                "# TYPE llmtune_requests_total counter",
            ]
            for (endpoint, outcome), n in sorted(self.requests.items()):
                lines.append(f'llmtune_requests_total{{endpoint="{endpoint}",outcome="{outcome}"}} {n}')
            lines += [
                "# HELP llmtune_generated_tokens_total New tokens generated.",
                "# TYPE llmtune_generated_tokens_total counter",
                f"llmtune_generated_tokens_total {self.tokens}",
                "# HELP llmtune_prompt_tokens_total Prompt tokens prefilled.",
                "# TYPE llmtune_prompt_tokens_total counter",
                f"llmtune_prompt_tokens_total {self.prompt_tokens}",
                "# HELP llmtune_queue_length Requests waiting for a batch slot.",
                "# TYPE llmtune_queue_length gauge",
                f"llmtune_queue_length {self.queue}",
                "# HELP llmtune_batch_size Sequences in the running batch.",
                "# TYPE llmtune_batch_size gauge",
                f"llmtune_batch_size {self.batch}",
                "# HELP llmtune_tokens_per_second Generated tokens per second over the last 10 s.",
                "# TYPE llmtune_tokens_per_second gauge",
                f"llmtune_tokens_per_second {rate:.3f}",
                "# HELP llmtune_time_to_first_token_seconds From arrival to the first generated token.",
                "# TYPE llmtune_time_to_first_token_seconds histogram",
            ]
            total = 0
            for bound, n in zip((*TTFT_BUCKETS, float("inf")), self.ttft_counts, strict=True):
                total += n
                le = "+Inf" if bound == float("inf") else f"{bound}"
                lines.append(f'llmtune_time_to_first_token_seconds_bucket{{le="{le}"}} {total}')
            lines += [
                f"llmtune_time_to_first_token_seconds_sum {self.ttft_sum:.6f}",
                f"llmtune_time_to_first_token_seconds_count {self.ttft_n}",
            ]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# generation


@dataclass(eq=False)  # identity: a job is found in the batch by itself, not by equal fields
class Job:
    """One sequence to generate. ``emit(kind, value)`` is called from the worker thread with
    ("piece", text) while streaming, then ("done", Generated) or ("error", message)."""

    prompt: str
    settings: GenerationSettings
    emit: Callable[[str, Any], None]
    add_special_tokens: bool = False
    max_input_tokens: int | None = None
    stream: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    # worker state
    prompt_ids: list[int] = field(default_factory=list)
    new: list[int] = field(default_factory=list)
    sent: str = ""
    generator: Any = None

    def cancel(self) -> None:
        self.cancelled.set()


def cache_is_plain(model: Any) -> bool:
    """Whether rows can be merged and dropped in the model's KV cache (a per-layer key/value
    tensor of shape [batch, heads, positions, dim], a ``cache`` argument to ``forward``)."""
    import inspect

    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if model.config.is_encoder_decoder or "cache" not in inspect.signature(model.forward).parameters:
        return False
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class ContinuousBatcher:
    """Generation requests joining and leaving one running batch (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int,
        max_queue: int,
        metrics: Metrics,
        lock: threading.Lock | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.lock = lock or threading.Lock()  # held while the worker computes (others may share the model)
        self.max_batch_size, self.max_queue, self.metrics = max(1, max_batch_size), max_queue, metrics
        self.continuous = cache_is_plain(model)
        self.stops = set(stop_token_ids(tokenizer, model)) if not model.config.is_encoder_decoder else set()
        if model.config.is_encoder_decoder:
            self.stops = {tokenizer.eos_token_id}
        self.device = model_device(model)
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        self.closed = False
        # the running batch: rows, their KV cache, attention mask [B, T], pending token and next position [B]
        self.rows: list[Job] = []
        self.cache: Any = None
        self.mask: Any = None
        self.last: Any = None
        self.pos: Any = None
        model.eval()
        self.thread = threading.Thread(target=self._run, name="llmtune-batcher", daemon=True)
        self.thread.start()

    # ---- called from the server's threads ----
    def submit(self, jobs: Sequence[Job]) -> None:
        with self.cond:
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull(
                    f"the server is busy: {len(self.waiting)} requests wait for a batch slot "
                    f"(--max-queue {self.max_queue}); retry later"
                )
            self.waiting.extend(jobs)
            self.metrics.queue = len(self.waiting)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        job.cancel()
        with self.cond:
            if job in self.waiting:  # not admitted yet: its queue slot is free at once
                self.waiting.remove(job)
                self.metrics.queue = len(self.waiting)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(timeout=30)

    # ---- the worker ----
    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self.cond:
                    while not self.closed and not self.waiting and not self.rows:
                        self.cond.wait()
                    if self.closed:
                        return
                    admit = []
                    while self.waiting and len(self.rows) + len(admit) < self.max_batch_size:
                        admit.append(self.waiting.popleft())
                    self.metrics.queue = len(self.waiting)
                with self.lock:
                    for job in admit:
                        if job.cancelled.is_set():
                            continue
                        try:
                            if self.continuous:
                                self._admit(job)
                            else:
                                self._alone(job)
                        except Exception as exc:  # this request fails, the batch goes on
                            job.emit("error", _message(exc))
                    self._drop([job for job in self.rows if job.cancelled.is_set()])
                    if self.rows:
                        self._step()
                self.metrics.batch = len(self.rows)
                admit = job = None  # an idle worker keeps no finished request (its tokens, its reply queue)
                if not self.rows and not self.waiting:  # the batch drained: the server goes idle
                    release_free_memory()

    def _encode(self, job: Job) -> Any:
        tok = self.tokenizer
        side = tok.truncation_side
        tok.truncation_side = "left"  # a decoder continues the end of its prompt: cut long prompts at the start
        try:
            enc = tok(
                [job.prompt],
                return_tensors="pt",
                add_special_tokens=job.add_special_tokens,
                truncation=job.max_input_tokens is not None,
                max_length=job.max_input_tokens,
            )
        finally:
            tok.truncation_side = side
        return enc["input_ids"].to(self.device)

    def _alone(self, job: Job) -> None:
        """A model whose cache cannot take rows that come and go: one request, whole."""
        run = generate_texts(
            self.model,
            self.tokenizer,
            [job.prompt],
            job.settings,
            1,
            add_special_tokens=job.add_special_tokens,
            max_input_tokens=job.max_input_tokens,
        )
        out = run.outputs[0]
        self.metrics.first_token(time.monotonic() - job.arrived)
        self.metrics.generated(out.new_tokens)
        self.metrics.prompt_tokens += out.prompt_tokens
        if job.stream and out.text:
            job.emit("piece", out.text)
        job.emit("done", out)

    def _admit(self, job: Job) -> None:
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        ids = self._encode(job)
        job.prompt_ids = ids[0].tolist()
        n = ids.shape[1]
        self.metrics.prompt_tokens += n
        if job.settings.sampling:
            job.generator = torch.Generator(device=self.device)
            if job.settings.seed is not None:
                job.generator.manual_seed(job.settings.seed)
            else:
                job.generator.seed()
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache, use_cache=True, logits_to_keep=1
        )
        token = self._choose(job, out.logits[:, -1, :].float())
        if self._push(job, token):
            return
        mask = torch.ones_like(ids)
        if self.rows:
            width = self.mask.shape[1]
            if n < width:  # the new row is shorter: pad it on the left
                pad = width - n
                for layer in cache.layers:
                    layer.keys, layer.values = F.pad(layer.keys, (0, 0, pad, 0)), F.pad(layer.values, (0, 0, pad, 0))
                mask = F.pad(mask, (pad, 0))
            elif n > width:  # longer: pad the batch
                pad = n - width
                for layer in self.cache.layers:
                    layer.keys, layer.values = F.pad(layer.keys, (0, 0, pad, 0)), F.pad(layer.values, (0, 0, pad, 0))
                self.mask = F.pad(self.mask, (pad, 0))
            for mine, new in zip(self.cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([mine.keys, new.keys])
                mine.values = torch.cat([mine.values, new.values])
            self.mask = torch.cat([self.mask, mask])
            self.last = torch.cat([self.last, torch.tensor([token], device=self.device)])
            self.pos = torch.cat([self.pos, torch.tensor([n], device=self.device)])
        else:
            self.cache, self.mask = cache, mask
            self.last = torch.tensor([token], device=self.device)
            self.pos = torch.tensor([n], device=self.device)
        self.rows.append(job)
        self.metrics.batch = len(self.rows)

    def _step(self) -> None:
        import torch

        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        try:
            out = self.model(
                input_ids=self.last[:, None],
                attention_mask=mask,
                position_ids=self.pos[:, None],
                cache=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        except Exception as exc:  # cannot tell which row broke the step: all of them fail
            for job in self.rows:
                job.emit("error", _message(exc))
            self._drop(list(self.rows))
            return
        self.mask, self.pos = mask, self.pos + 1
        logits = out.logits[:, -1, :].float()
        greedy = logits.argmax(dim=-1).tolist()
        done, tokens = [], []
        for i, job in enumerate(self.rows):
            s = job.settings
            try:
                token = self._choose(job, logits[i : i + 1]) if s.sampling or s.repetition_penalty != 1.0 else greedy[i]
                finished = self._push(job, token)
            except Exception as exc:  # a row that fails leaves; the others go on
                job.emit("error", _message(exc))
                token, finished = 0, True
            tokens.append(token)
            if finished:
                done.append(job)
        self.last = torch.tensor(tokens, device=self.device)
        self._drop(done)

    def _choose(self, job: Job, logits: Any) -> int:
        """The next token of one row from its logits [1, vocab], as ``generate`` picks it."""
        import torch
        from transformers import (
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        s = job.settings
        if s.repetition_penalty != 1.0:
            seen = torch.tensor([job.prompt_ids + job.new], device=logits.device)
            logits = RepetitionPenaltyLogitsProcessor(s.repetition_penalty)(seen, logits)
        if not s.sampling:
            return int(logits.argmax(dim=-1))
        logits = TemperatureLogitsWarper(s.temperature)(None, logits)
        if s.top_k:
            logits = TopKLogitsWarper(s.top_k)(None, logits)
        if s.top_p < 1.0:
            logits = TopPLogitsWarper(s.top_p)(None, logits)
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=job.generator))

    def _push(self, job: Job, token: int) -> bool:
        """Record a new token of ``job``; stream what is safe to send; True when the row is done
        (and then its answer was emitted)."""
        now = time.monotonic()
        if job.first_token_at is None:
            job.first_token_at = now
            self.metrics.first_token(now - job.arrived)
        job.new.append(token)
        self.metrics.generated(1)
        s = job.settings
        finished = token in self.stops or len(job.new) >= s.max_new_tokens
        if not finished and (job.stream or s.stop):
            markers = [*s.stop, *END_OF_TURN]
            text = decode_answer(self.tokenizer, job.new)
            _, found = cut_at_stop(text, markers)
            if found:
                finished = True
            elif job.stream and not text.endswith("\ufffd"):  # not in the middle of a character
                safe = text[: max(len(job.sent), len(text) - (max(len(m) for m in markers) - 1))]
                if len(safe) > len(job.sent) and safe.startswith(job.sent):
                    job.emit("piece", safe[len(job.sent) :])
                    job.sent = safe
        if finished:
            out = finish_generated(self.tokenizer, job.new, self.stops, s, len(job.prompt_ids))
            if job.stream:
                sent = job.sent.lstrip()  # the answer is stripped; what was sent is its beginning
                if out.text.startswith(sent) and len(out.text) > len(sent):
                    job.emit("piece", out.text[len(sent) :])
            job.emit("done", out)
        return finished

    def _drop(self, jobs: list[Job]) -> None:
        """Take rows out of the batch; drop the cache columns that only they used."""
        import torch

        if not jobs:
            return
        keep = [i for i, job in enumerate(self.rows) if job not in jobs]
        if not keep:
            self.rows, self.cache, self.mask, self.last, self.pos = [], None, None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.mask = self.mask.index_select(0, index)
        first = int((self.mask.sum(dim=0) > 0).nonzero()[0])
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self.last = self.last.index_select(0, index)
        self.pos = self.pos.index_select(0, index)
        self.rows = [self.rows[i] for i in keep]


def release_free_memory() -> None:
    """Give the heap pages glibc keeps after ``free`` back to the system (``malloc_trim``; Linux
    with glibc only, nothing elsewhere). Called when the batch drains. Why: a batch's KV cache and
    activations are many mid-sized tensors that glibc serves from the worker thread's arena; once
    freed they stay resident, so an idle server kept the memory of its largest batch (the soak in
    BENCHMARKS.md: +377 MiB after 500 requests, none of it live: ``malloc_trim`` took it back).
    It costs a walk over the free lists, once per drain, not per step."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # another C library (musl): no malloc_trim, nothing to give back
        pass


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"generation failed: {type(exc).__name__}{': ' + text if text else ''}"


# ---------------------------------------------------------------------------------------------
# non-generative tasks


@dataclass(eq=False)
class PredictJob:
    rows: list[dict]
    emit: Callable[[str, Any], None]
    # requests are grouped by this key (their columns): one preparation of the task per group
    key: tuple = ()


class MicroBatcher:
    """``/v1/predict``: requests that arrive while a batch runs are run together next, as one
    call of ``run(rows)`` per group of requests with the same columns. When a combined call
    fails, each request of it is retried alone, so only the bad one gets the error."""

    def __init__(self, run: Callable[[list[PredictJob]], list[list[dict]]], max_batch_size: int, max_queue: int):
        self.run, self.max_batch_size, self.max_queue = run, max(1, max_batch_size), max_queue
        self.waiting: deque[PredictJob] = deque()
        self.cond = threading.Condition()
        self.closed = False
        # sizes (requests) of the latest batches, for tests and logs; bounded: a server runs for weeks
        self.batches: deque[int] = deque(maxlen=256)
        self.thread = threading.Thread(target=self._work, name="llmtune-predict", daemon=True)
        self.thread.start()

    def submit(self, job: PredictJob) -> None:
        with self.cond:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(
                    f"the server is busy: {len(self.waiting)} requests wait (--max-queue {self.max_queue}); retry later"
                )
            self.waiting.append(job)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self.waiting:
                    self.cond.wait()
                if self.closed:
                    return
                first = self.waiting.popleft()
                group = [first]
                for job in list(self.waiting):
                    if len(group) >= self.max_batch_size:
                        break
                    if job.key == first.key:
                        self.waiting.remove(job)
                        group.append(job)
            self.batches.append(len(group))
            try:
                results = self.run(group)
            except Exception as exc:
                if len(group) == 1:
                    first.emit("error", exc)
                    continue
                for job in group:  # find the request that broke it
                    try:
                        job.emit("done", self.run([job])[0])
                    except Exception as one:
                        job.emit("error", one)
                continue
            for job, result in zip(group, results, strict=True):
                job.emit("done", result)
