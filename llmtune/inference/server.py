"""The HTTP app of ``llmtune serve``: an OpenAI-compatible API on FastAPI (the ``serve`` extra).

- ``GET /v1/models``; ``POST /v1/chat/completions`` and ``/v1/completions`` (JSON or, with
  ``"stream": true``, server-sent events ending in ``data: [DONE]``) for causal LMs;
- ``POST /v1/predict`` for every task: ``{"inputs": [row or text, ...]}`` -> the records
  ``llmtune predict`` writes;
- ``GET /metrics``: Prometheus text (requests, tokens, queue length, batch size, time to first
  token, tokens/s);
- an optional API key (``Authorization: Bearer KEY``), a request body limit (413), a max-tokens
  limit and range checks (400), a queue limit (429), OpenAI's error shape
  ``{"error": {"message", "type", ...}}``.

Concurrent generation requests share one running batch (continuous batching,
:mod:`llmtune.inference.scheduler`): one worker thread owns the model, the routes are coroutines
that hand it jobs and wait for their tokens. ``/v1/predict`` requests that arrive together run as
one batch. A lock keeps the two workers off the model at the same time.
"""

# No ``from __future__ import annotations``: FastAPI reads the route parameters' annotations at
# run time to tell a request body from a query parameter.
import asyncio
import contextlib
import json
import secrets
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmtune.errors import LlmtuneError
from llmtune.inference.generation import GenerationSettings

#: JSON field names of the sampling settings, for error messages
FIELD_NAMES = {
    "max_new_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
    "stop": "stop",
}


@dataclass
class ServeOptions:
    model_name: str
    api_key: str | None = None
    # A request may ask for at most this many new tokens (max_tokens); default when it does not say.
    max_tokens_limit: int = 2048
    default_max_tokens: int = 256
    max_body_bytes: int = 1_000_000
    # Sampling defaults for requests that do not set them (the server's --temperature etc.).
    defaults: GenerationSettings = field(default_factory=GenerationSettings)
    batch_size: int = 8
    # Sequences generated together (1 = one request at a time, the server before batching).
    max_batch_size: int = 8
    # Requests waiting for a slot beyond this are refused with 429.
    max_queue: int = 64
    # One line per request on stderr (endpoint, status, tokens, time to first token, latency).
    log_requests: bool = False


class RequestError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: Any = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def create_app(ctx: Any, opts: ServeOptions) -> Any:
    """The FastAPI app serving ``ctx`` (a loaded :class:`~llmtune.tasks.base.RunContext`)."""
    from fastapi.responses import PlainTextResponse

    from llmtune.inference.generation import (
        chat_prompt,
        fit_conversation,
        has_chat_template,
        max_prompt_tokens,
    )
    from llmtune.inference.inputs import columns_of
    from llmtune.inference.predict import PredictSettings, predict_rows
    from llmtune.inference.scheduler import ContinuousBatcher, Job, Metrics, MicroBatcher, PredictJob, QueueFull

    task = ctx.state["task"]
    lock = threading.Lock()  # the model: generation worker and predict worker take turns
    metrics = Metrics()
    batcher = (
        ContinuousBatcher(ctx.model, ctx.tokenizer, opts.max_batch_size, opts.max_queue, metrics, lock)
        if task.generative
        else None
    )

    def run_predict(group: list[PredictJob]) -> list[list[dict]]:
        rows = [r for job in group for r in job.rows]
        settings = PredictSettings(batch_size=opts.batch_size, all_scores=group[0].key[1], threshold=group[0].key[2])
        with lock:
            task.prepare_inference(ctx, list(group[0].key[0]))
            records = predict_rows(ctx, rows, settings)
        out, at = [], 0
        for job in group:
            out.append(records[at : at + len(job.rows)])
            at += len(job.rows)
        return out

    predictor = MicroBatcher(run_predict, opts.max_batch_size, opts.max_queue)
    created = int(time.time())

    def close_workers() -> None:
        if batcher is not None:
            batcher.close()
        predictor.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        close_workers()

    app = FastAPI(title="llmtune", version="1", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.metrics, app.state.batcher, app.state.predictor = metrics, batcher, predictor

    class Sampling(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str | None = None
        max_tokens: int | None = None
        max_completion_tokens: int | None = None
        temperature: float | None = None
        top_p: float | None = None
        top_k: int | None = None
        repetition_penalty: float | None = None
        seed: int | None = None
        stop: Union[str, list[str], None] = None
        stream: bool = False
        n: int = 1

    class CompletionRequest(Sampling):
        prompt: Union[str, list[str]]

    class Message(BaseModel):
        model_config = ConfigDict(extra="ignore")
        role: str
        content: Union[str, list[dict], None] = None

    class ChatRequest(Sampling):
        messages: list[Message]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str | None = None
        inputs: list[Union[dict, str]]
        all_scores: bool = False
        threshold: float | None = None

    # ---- errors, limits, auth -----------------------------------------------------------------
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> Any:
        return JSONResponse(error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return JSONResponse(error_body(message, param=where or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        return JSONResponse(
            error_body(str(exc.detail), kind="not_found_error" if exc.status_code == 404 else "invalid_request_error"),
            status_code=exc.status_code,
        )

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Any:
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse(error_body("a Content-Length header is required"), status_code=411)
            if not length.isdigit() or int(length) > opts.max_body_bytes:
                return JSONResponse(
                    error_body(f"request body of {length} bytes exceeds the limit of {opts.max_body_bytes} bytes"),
                    status_code=413,
                )
        return await call_next(request)

    def authorize(request: Request) -> None:
        if opts.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), opts.api_key):
            raise RequestError(
                401, "invalid or missing API key: send 'Authorization: Bearer KEY'", kind="authentication_error"
            )

    # ---- helpers --------------------------------------------------------------------------------
    def check_model(name: str | None) -> None:
        if name is not None and name != opts.model_name:
            raise RequestError(
                404, f"model '{name}' not found; this server serves '{opts.model_name}'", "model", "not_found_error"
            )

    def need_generator() -> None:
        if not task.generative:
            raise RequestError(
                400, f"'{opts.model_name}' is a {task.name} model, not a text generator: use POST /v1/predict"
            )

    def settings_for(req: Any) -> GenerationSettings:
        d = opts.defaults
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if asked is not None and asked > opts.max_tokens_limit:
            raise RequestError(
                400, f"max_tokens {asked} exceeds this server's limit of {opts.max_tokens_limit}", "max_tokens"
            )
        if req.n != 1:
            raise RequestError(400, f"n={req.n} is not supported: only one choice per request (n=1)", "n")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or d.stop)
        settings = GenerationSettings(
            max_new_tokens=asked if asked is not None else opts.default_max_tokens,
            temperature=d.temperature if req.temperature is None else req.temperature,
            top_p=d.top_p if req.top_p is None else req.top_p,
            top_k=d.top_k if req.top_k is None else req.top_k,
            repetition_penalty=d.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
            seed=d.seed if req.seed is None else req.seed,
            greedy=d.greedy,
            stop=stop,
        )
        problems = settings.problems(FIELD_NAMES)
        if problems:
            raise RequestError(400, "; ".join(problems))
        return settings

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def render_chat(messages: list[Message], settings: GenerationSettings) -> tuple[str, bool]:
        turns = []
        for m in messages:
            content = m.content
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(str(p.get("text", "")) for p in content if p.get("type", "text") == "text")
            turns.append({"role": m.role, "content": content or ""})
        if not turns:
            raise RequestError(400, "messages must hold at least one message", "messages")
        if has_chat_template(ctx.tokenizer):
            limit = max_prompt_tokens(ctx.model, ctx.tokenizer, settings.max_new_tokens)
            try:
                return chat_prompt(ctx.tokenizer, fit_conversation(ctx.tokenizer, turns, limit)), True
            except LlmtuneError as exc:
                raise RequestError(400, str(exc), "messages") from None
        return "\n".join(t["content"] for t in turns), False  # no template: plain continuation

    def sse(payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def channel() -> tuple[asyncio.Queue, Any]:
        """A queue the worker thread fills through ``emit(kind, value)``."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        return queue, emit

    def submit(jobs: list[Job], endpoint: str) -> None:
        assert batcher is not None
        try:
            batcher.submit(jobs)
        except QueueFull as exc:
            metrics.request(endpoint, "rejected")
            raise RequestError(429, str(exc), kind="rate_limit_error", code="rate_limit_exceeded") from None

    def log(endpoint: str, status: str, job: Job | None, prompt_tokens: int = 0, new_tokens: int = 0) -> None:
        metrics.request(endpoint, status)
        if not opts.log_requests:
            return
        now = time.monotonic()
        ttft = f"{job.first_token_at - job.arrived:.3f}s" if job is not None and job.first_token_at else "-"
        took = f"{now - job.arrived:.3f}s" if job is not None else "-"
        print(
            f"llmtune serve: {endpoint} {status} prompt_tokens={prompt_tokens} new_tokens={new_tokens} "
            f"ttft={ttft} latency={took}",
            file=sys.stderr,
            flush=True,
        )

    async def answer(job: Job, queue: asyncio.Queue) -> Any:
        """The job's ``Generated``; a failure of this request is a 500 of this request only."""
        while True:
            kind, value = await queue.get()
            if kind == "done":
                return value
            if kind == "error":
                raise RequestError(500, str(value), kind="server_error")

    async def generate(prompts: list[str], settings: GenerationSettings, templated: bool, endpoint: str) -> list[Any]:
        limit = max_prompt_tokens(ctx.model, ctx.tokenizer, settings.max_new_tokens)
        pairs = []
        for prompt in prompts:
            queue, emit = channel()
            pairs.append((Job(prompt, settings, emit, not templated, limit), queue))
        submit([job for job, _ in pairs], endpoint)
        done = False
        try:
            outs = [await answer(job, queue) for job, queue in pairs]
            done = True
        except RequestError:
            done = True
            log(endpoint, "error", pairs[0][0])
            raise
        finally:
            if not done:  # the client went away: free the slots
                for job, _ in pairs:
                    batcher.cancel(job)
                log(endpoint, "cancelled", pairs[0][0])
        log(endpoint, "ok", pairs[0][0], sum(o.prompt_tokens for o in outs), sum(o.new_tokens for o in outs))
        return outs

    def stream_events(prompt: str, settings: GenerationSettings, templated: bool, chunk: Any, endpoint: str) -> Any:
        limit = max_prompt_tokens(ctx.model, ctx.tokenizer, settings.max_new_tokens)
        queue, emit = channel()
        job = Job(prompt, settings, emit, not templated, limit, stream=True)
        submit([job], endpoint)  # before the response starts: a full queue is a 429, not a broken stream

        async def events() -> Any:
            finished = False
            try:
                yield sse(chunk(None, None))  # the opening chunk (chat: the role)
                while True:
                    kind, value = await queue.get()
                    if kind == "piece":
                        yield sse(chunk(value, None))
                    elif kind == "done":
                        yield sse(chunk("", value.finish_reason))
                        yield "data: [DONE]\n\n"
                        finished = True
                        log(endpoint, "ok", job, value.prompt_tokens, value.new_tokens)
                        return
                    else:
                        finished = True
                        log(endpoint, "error", job)
                        yield sse(error_body(str(value), kind="server_error"))
                        return
            finally:
                if not finished:  # the client disconnected: its row leaves the batch at the next step
                    batcher.cancel(job)
                    log(endpoint, "cancelled", job, 0, len(job.new))

        return events()

    # ---- routes ---------------------------------------------------------------------------------
    @app.get("/v1/models", dependencies=[Depends(authorize)])
    def models() -> dict:
        return {
            "object": "list",
            "data": [
                {"id": opts.model_name, "object": "model", "created": created, "owned_by": "llmtune", "task": task.name}
            ],
        }

    @app.get("/metrics")
    def prometheus() -> Any:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": opts.model_name, "task": task.name}

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(req: CompletionRequest) -> Any:
        check_model(req.model)
        need_generator()
        settings = settings_for(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise RequestError(400, "prompt must not be empty", "prompt")
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            if len(prompts) != 1:
                raise RequestError(400, "streaming takes a single prompt", "prompt")

            def chunk(piece: str | None, finish: str | None) -> dict:
                choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
                return {
                    "id": rid,
                    "object": "text_completion",
                    "created": now,
                    "model": opts.model_name,
                    "choices": [choice],
                }

            events = stream_events(prompts[0], settings, False, chunk, "completions")
            return StreamingResponse(events, media_type="text/event-stream")
        outputs = await generate(prompts, settings, False, "completions")
        choices = [
            {"index": i, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
            for i, g in enumerate(outputs)
        ]
        return {
            "id": rid,
            "object": "text_completion",
            "created": now,
            "model": opts.model_name,
            "choices": choices,
            "usage": usage(sum(g.prompt_tokens for g in outputs), sum(g.new_tokens for g in outputs)),
        }

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(req: ChatRequest) -> Any:
        check_model(req.model)
        need_generator()
        settings = settings_for(req)
        prompt, templated = render_chat(req.messages, settings)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:

            def chunk(piece: str | None, finish: str | None) -> dict:
                delta = (
                    {"role": "assistant", "content": ""}
                    if piece is None and finish is None
                    else ({"content": piece} if piece else {})
                )
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": now,
                    "model": opts.model_name,
                    "choices": [choice],
                }

            events = stream_events(prompt, settings, templated, chunk, "chat")
            return StreamingResponse(events, media_type="text/event-stream")
        (g,) = await generate([prompt], settings, templated, "chat")
        return {
            "id": rid,
            "object": "chat.completion",
            "created": now,
            "model": opts.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": g.text},
                    "logprobs": None,
                    "finish_reason": g.finish_reason,
                }
            ],
            "usage": usage(g.prompt_tokens, g.new_tokens),
        }

    @app.post("/v1/predict", dependencies=[Depends(authorize)])
    async def predict(req: PredictRequest) -> dict:
        check_model(req.model)
        if not req.inputs:
            raise RequestError(400, "inputs must hold at least one row", "inputs")
        if req.threshold is not None and not 0 < req.threshold < 1:
            raise RequestError(400, f"threshold must be between 0 and 1, got {req.threshold}", "threshold")
        rows = [{"text": r} if isinstance(r, str) else r for r in req.inputs]
        queue, emit = channel()
        job = PredictJob(rows, emit, (tuple(columns_of(rows)), req.all_scores, req.threshold))
        try:
            predictor.submit(job)
        except QueueFull as exc:
            metrics.request("predict", "rejected")
            raise RequestError(429, str(exc), kind="rate_limit_error", code="rate_limit_exceeded") from None
        kind, value = await queue.get()
        if kind == "error":
            metrics.request("predict", "error")
            if isinstance(value, LlmtuneError):
                raise RequestError(400, str(value), "inputs")
            raise RequestError(500, f"prediction failed: {type(value).__name__}: {value}", kind="server_error")
        metrics.request("predict", "ok")
        return {"object": "list", "model": opts.model_name, "task": task.name, "predictions": value}

    return app
