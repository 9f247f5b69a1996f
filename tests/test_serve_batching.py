"""`llmtune serve` under concurrent load: continuous batching, queue limit, disconnects, /metrics,
micro-batched /v1/predict. Live servers run in this process (uvicorn on the loopback address in a
thread) so a test can slow the model down and read the batcher's state."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.run_utils import env
from tests.test_predict import greedy_reference

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")


def load(model_dir):
    from llmtune.inference.loader import load_for_inference

    return load_for_inference(str(model_dir), generative=True, require_generative=False)


def slow_down(model, seconds: float) -> None:
    """Every forward pass takes at least ``seconds``: requests overlap however fast the machine is."""
    forward = model.forward

    @functools.wraps(forward)  # keeps the signature the batcher inspects
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    model.forward = slow


class LiveServer:
    def __init__(self, ctx, **options):
        import uvicorn

        from llmtune.inference.server import ServeOptions, create_app

        opts = ServeOptions(model_name="tiny", max_tokens_limit=200, **options)
        self.app = create_app(ctx, opts)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=60)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if not ln.startswith("#")}

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def chat(api, prompt: str, max_tokens: int, stream: bool) -> str:
    messages = [{"role": "user", "content": prompt}]
    if stream:
        pieces = api.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in pieces).strip()
    return (
        api.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens).choices[0].message.content
    )


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


# ---- the scheduler itself -------------------------------------------------------------------------


def test_rows_joining_and_leaving_give_what_each_prompt_gives_alone(tiny_llama_dir):
    """Prompts of different lengths arrive while others generate, with different max_tokens, some
    streamed, one with a repetition penalty: each gets exactly its one-at-a-time greedy answer. A row
    whose sampling fails in the middle of the batch fails alone."""
    from llmtune.inference.generation import GenerationSettings, generate_texts
    from llmtune.inference.scheduler import ContinuousBatcher, Job, Metrics

    ctx = load(tiny_llama_dir)
    model, tok = ctx.model, ctx.tokenizer
    slow_down(model, 0.01)
    prompts = ["translate the dog", "a cat", "the red car sees a very big old house that is green and small", "hi",
               "translate old house", "small green", "sees the cat run", "new car"]  # fmt: skip
    settings = [
        GenerationSettings(max_new_tokens=6 + 3 * i, greedy=True, repetition_penalty=1.3 if i == 3 else 1.0)
        for i in range(len(prompts))
    ]
    alone = [
        generate_texts(model, tok, [p], s, 1, add_special_tokens=True).outputs[0]
        for p, s in zip(prompts, settings, strict=True)
    ]

    results: dict[int, tuple] = {}
    pieces: dict[int, list[str]] = {i: [] for i in range(len(prompts) + 1)}
    done = threading.Semaphore(0)

    def emitter(i):
        def emit(kind, value):
            if kind == "piece":
                pieces[i].append(value)
            else:
                results[i] = (kind, value)
                done.release()

        return emit

    batcher = ContinuousBatcher(model, tok, 4, 64, Metrics())
    assert batcher.continuous
    peak = []
    try:
        for i, (p, s) in enumerate(zip(prompts, settings, strict=True)):
            batcher.submit([Job(p, s, emitter(i), True, None, stream=i % 2 == 1)])
            if i == 4:  # a row that breaks once it is in the running batch
                bad = GenerationSettings(max_new_tokens=60, temperature=0.7, top_k=5)
                broken = Job("the dog", bad, emitter(len(prompts)), True, None)
                batcher.submit([broken])
                assert wait_for(lambda job=broken: job in batcher.rows)
                bad.top_k = -1  # past validation: the sampler raises for this row only
            time.sleep(0.03)  # the next one arrives while the batch is generating
            peak.append(len(batcher.rows))
        for _ in range(len(prompts) + 1):
            assert done.acquire(timeout=120)
    finally:
        batcher.close()
    assert max(peak) > 1  # requests did share the batch
    for i, ref in enumerate(alone):
        kind, got = results[i]
        assert kind == "done"
        assert (got.text, got.new_tokens, got.finish_reason) == (ref.text, ref.new_tokens, ref.finish_reason), i
        if i % 2 == 1:
            assert "".join(pieces[i]).strip() == ref.text  # streamed pieces add up to the answer
    kind, message = results[len(prompts)]
    assert kind == "error" and "generation failed: ValueError" in message and "top_k" in message


def test_finished_and_cancelled_requests_leave_nothing_behind(tiny_llama_dir, monkeypatch):
    """Requests that finish, or are cancelled while waiting or while in the batch, leave nothing in
    the batcher: no rows, no KV cache, an empty queue (a cancelled waiting request frees its queue
    slot at once), and no Job is kept alive by the idle worker; freed memory is handed back once, when
    the batch drains, not at every step. The predict batcher's record of batch sizes is bounded.
    Otherwise a server's memory grows with every request it has answered."""
    import gc
    import weakref

    from llmtune.inference import scheduler
    from llmtune.inference.generation import GenerationSettings
    from llmtune.inference.scheduler import ContinuousBatcher, Job, Metrics, MicroBatcher, PredictJob

    trims = []
    monkeypatch.setattr(scheduler, "release_free_memory", lambda: trims.append(len(batcher.rows)))
    ctx = load(tiny_llama_dir)
    slow_down(ctx.model, 0.01)
    metrics = Metrics()
    batcher = ContinuousBatcher(ctx.model, ctx.tokenizer, 2, 64, metrics)
    answered = threading.Semaphore(0)

    def ignore(kind, value):
        pass

    def count(kind, value):
        if kind != "piece":
            answered.release()

    def settings(n):
        return GenerationSettings(max_new_tokens=n, greedy=True)

    try:
        long = [Job("the dog", settings(200), ignore, True, None, stream=True) for _ in range(2)]
        batcher.submit(long)
        assert wait_for(lambda: len(batcher.rows) == 2)  # the batch is full
        queued = Job("a cat", settings(5), ignore, True, None)
        batcher.submit([queued])
        batcher.cancel(queued)
        assert len(batcher.waiting) == 0 and metrics.queue == 0
        short = [Job(p, settings(4), count, True, None) for p in ("hi", "new car", "small green")]
        batcher.submit(short)
        for job in long:  # in the batch: they leave at the next step, the short ones take their places
            batcher.cancel(job)
        for _ in range(len(short)):
            assert answered.acquire(timeout=60)
        assert wait_for(lambda: not batcher.rows and not batcher.waiting and metrics.batch == 0)
        assert batcher.cache is None and batcher.mask is None and batcher.last is None and batcher.pos is None
        assert wait_for(lambda: trims == [0])  # one drain, one trim, with the batch empty
        refs = [weakref.ref(job) for job in (*long, queued, *short)]
        del long, queued, short, job

        def freed():
            gc.collect()
            return all(ref() is None for ref in refs)

        assert wait_for(freed)  # the worker, still running, holds none
    finally:
        batcher.close()

    predictor = MicroBatcher(lambda group: [[{}] for _ in group], max_batch_size=1, max_queue=1000)
    try:
        for _ in range(600):
            predictor.submit(PredictJob([{}], ignore))
        assert wait_for(lambda: not predictor.waiting)
    finally:
        predictor.close()
    assert 0 < len(predictor.batches) <= 256


def test_predict_requests_arriving_together_run_as_one_batch():
    from llmtune.inference.scheduler import MicroBatcher, PredictJob

    gate, calls = threading.Event(), []

    def run(group):
        calls.append([job.rows for job in group])
        gate.wait(10)
        if any(row.get("bad") for job in group for row in job.rows):
            raise ValueError("bad row")
        return [[{"n": row["n"] * 10} for row in job.rows] for job in group]

    batcher = MicroBatcher(run, max_batch_size=8, max_queue=8)
    results, done = {}, threading.Semaphore(0)

    def job(i, rows):
        def emit(kind, value):
            results[i] = (kind, value)
            done.release()

        return PredictJob(rows, emit, ("text",))

    try:
        batcher.submit(job(0, [{"n": 0}]))
        assert wait_for(lambda: len(calls) == 1)  # the first runs alone; the next ones wait for it
        batcher.submit(job(1, [{"n": 1}, {"n": 2}]))
        batcher.submit(job(2, [{"n": 3, "bad": True}]))
        batcher.submit(job(3, [{"n": 4}]))
        gate.set()
        for _ in range(4):
            assert done.acquire(timeout=10)
    finally:
        batcher.close()
    assert list(batcher.batches)[:2] == [1, 3]  # three waiting requests, one call
    assert results[0] == ("done", [{"n": 0}])
    assert results[1] == ("done", [{"n": 10}, {"n": 20}]) and results[3] == ("done", [{"n": 40}])
    assert results[2][0] == "error" and "bad row" in str(results[2][1])  # only the bad request failed


# ---- live servers on the loopback address -----------------------------------------------------------


@pytest.fixture()
def batched_server(tiny_llama_dir):
    ctx = load(tiny_llama_dir)
    slow_down(ctx.model, 0.005)
    server = LiveServer(ctx, max_batch_size=4, max_queue=16, defaults=_greedy())
    yield server
    server.close()


def _greedy():
    from llmtune.inference.generation import GenerationSettings

    return GenerationSettings(greedy=True)


@pytest.mark.slow
def test_concurrent_clients_share_a_batch_and_get_their_own_answers(batched_server, tiny_llama_dir):
    api = batched_server.client()
    prompts = ["translate the dog", "a cat", "the red car sees a very big old house", "translate old house",
               "small green", "sees the cat", "the dog runs", "new car"]  # fmt: skip
    lengths = [4 + 2 * i for i in range(len(prompts))]
    expected = {p: greedy_reference(tiny_llama_dir, p, n, chat=True) for p, n in zip(prompts, lengths, strict=True)}
    plain = greedy_reference(tiny_llama_dir, "the film", 8, chat=False)

    def ask(i):
        if i == len(prompts):  # completions too, in the same batch
            return "the film", api.completions.create(model="tiny", prompt="the film", max_tokens=8).choices[0].text
        if i == len(prompts) + 1:  # a bad request among them: 400, the others go on
            try:
                api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], top_p=5)
            except openai.BadRequestError as exc:
                return "bad", exc.status_code
            return "bad", 200
        return prompts[i], chat(api, prompts[i], lengths[i], stream=i % 2 == 1)

    with ThreadPoolExecutor(max_workers=len(prompts) + 2) as pool:
        answers = dict(pool.map(ask, range(len(prompts) + 2)))
    assert answers.pop("bad") == 400
    assert answers.pop("the film") == plain
    assert answers == expected
    m = batched_server.metrics()
    assert m['llmtune_requests_total{endpoint="chat",outcome="ok"}'] == len(prompts)
    assert m['llmtune_requests_total{endpoint="completions",outcome="ok"}'] == 1
    assert m["llmtune_generated_tokens_total"] >= len(prompts)
    assert m["llmtune_time_to_first_token_seconds_count"] == len(prompts) + 1
    assert m["llmtune_batch_size"] == 0 and m["llmtune_queue_length"] == 0


@pytest.mark.slow
def test_full_queue_is_429_and_a_disconnected_stream_frees_its_slot(tiny_llama_dir):
    ctx = load(tiny_llama_dir)
    slow_down(ctx.model, 0.05)  # 150 tokens take 7.5 s: far longer than the checks below
    server = LiveServer(ctx, max_batch_size=1, max_queue=1, defaults=_greedy())
    try:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "the dog"}],
            "max_tokens": 150,
            "stream": True,
        }
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", f"{server.url}/v1/chat/completions", json=body) as first,
        ):
            lines = first.iter_lines()
            assert next(lines).startswith("data: ")  # the stream is open: it holds the only slot
            assert wait_for(lambda: server.metrics()["llmtune_batch_size"] == 1)
            api = server.client()
            with ThreadPoolExecutor(max_workers=1) as pool:
                waiting = pool.submit(chat, api, "a cat", 5, False)  # waits in the queue
                assert wait_for(lambda: server.metrics()["llmtune_queue_length"] == 1)
                with pytest.raises(openai.RateLimitError) as full:
                    chat(api, "new car", 5, False)
                error = full.value.response.json()["error"]
                assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
                assert "--max-queue 1" in error["message"]
                closed_at = time.time()
                first.close()  # the client goes away mid-answer
                # its slot goes to the waiting request, which finishes long before 150 tokens would have
                assert waiting.result(timeout=30) == greedy_reference(tiny_llama_dir, "a cat", 5, chat=True)
                assert time.time() - closed_at < 5
        m = server.metrics()
        assert m['llmtune_requests_total{endpoint="chat",outcome="cancelled"}'] == 1
        assert m['llmtune_requests_total{endpoint="chat",outcome="rejected"}'] == 1
        assert m["llmtune_generated_tokens_total"] < 150
        assert server.app.state.batcher.rows == []
    finally:
        server.close()


@pytest.mark.slow
def test_predict_endpoint_batches_concurrent_requests(tiny_wordpiece_dir, tmp_path):
    from tests.test_predict import bert_head, save_llmtune_config

    model = bert_head(
        tiny_wordpiece_dir, tmp_path / "cls", "AutoModelForSequenceClassification", num_labels=2,
        id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
    )  # fmt: skip
    save_llmtune_config(model, {"task": "sentiment"})
    from llmtune.inference.loader import load_for_inference

    ctx = load_for_inference(str(model))
    slow_down(ctx.model, 0.2)
    server = LiveServer(ctx, max_batch_size=8, max_queue=16)
    texts = ["the film was great", "bad", "a very very long and quite boring book", "good", "fine", "awful film"]
    try:
        alone = {
            t: httpx.post(f"{server.url}/v1/predict", json={"inputs": [t]}).json()["predictions"][0] for t in texts
        }
        before = len(server.app.state.predictor.batches)

        def ask(t):
            return t, httpx.post(f"{server.url}/v1/predict", json={"inputs": [t]}, timeout=60).json()["predictions"][0]

        with ThreadPoolExecutor(max_workers=len(texts)) as pool:
            together = dict(pool.map(ask, texts))
        assert together.keys() == alone.keys()
        for t in texts:
            assert together[t]["label"] == alone[t]["label"]
            assert together[t]["score"] == pytest.approx(alone[t]["score"], abs=1e-5)
        assert max(list(server.app.state.predictor.batches)[before:]) > 1  # arrivals were run together
        bad = httpx.post(f"{server.url}/v1/predict", json={"inputs": [{"stars": "x"}]})
        assert bad.status_code == 400 and "no text column" in bad.json()["error"]["message"]
    finally:
        server.close()


@pytest.mark.parametrize("flag", ["--max-batch-size", "--max-queue"])
def test_batching_limits_must_be_positive(flag, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "llmtune", "serve", "--model", str(tmp_path), flag, "0"],
        capture_output=True, text=True, env=env(), timeout=120,
    )  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and lines == [f"error: {flag} must be >= 1, got 0"]


def test_metrics_text_format():
    from llmtune.inference.scheduler import Metrics

    m = Metrics()
    m.request("chat", "ok")
    m.generated(5)
    m.first_token(0.2)
    m.first_token(3.0)
    text = m.render()
    assert 'llmtune_requests_total{endpoint="chat",outcome="ok"} 1' in text
    assert "llmtune_generated_tokens_total 5" in text
    assert 'llmtune_time_to_first_token_seconds_bucket{le="0.25"} 1' in text
    assert 'llmtune_time_to_first_token_seconds_bucket{le="+Inf"} 2' in text
    assert "llmtune_time_to_first_token_seconds_count 2" in text
    assert "llmtune_tokens_per_second 0.500" in text  # 5 tokens over the last 10 s
