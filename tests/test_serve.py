"""`llmtune serve`: a live server on localhost, driven by the official `openai` client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.run_utils import env
from tests.test_predict import greedy_reference

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

KEY = "test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtune", "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    import httpx

    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("server did not start")


@pytest.fixture(scope="module")
def server(tiny_llama_dir):
    port = free_port()
    proc = start(["--model", str(tiny_llama_dir), "--greedy", "--api-key", KEY, "--max-tokens-limit", "64",
                  "--max-body-bytes", "20000", "--served-name", "tiny"], port)  # fmt: skip
    yield port, proc
    proc.terminate()
    proc.wait(timeout=30)


def client(port: int, key: str = KEY):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.slow
def test_openai_client_chat_and_completions(server, tiny_llama_dir):
    port, _ = server
    api = client(port)
    assert [m.id for m in api.models.list().data] == ["tiny"]
    prompt = "translate the big dog"
    expected = greedy_reference(tiny_llama_dir, prompt, 10, chat=True)
    reply = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=10)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 10 and reply.usage.prompt_tokens > 0
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in api.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=10, stream=True
        )
    ]
    assert "".join(pieces).strip() == expected  # streamed pieces add up to the same answer
    plain = api.completions.create(model="tiny", prompt="the film", max_tokens=8)
    assert plain.choices[0].text == greedy_reference(tiny_llama_dir, "the film", 8, chat=False)
    streamed = "".join(
        c.choices[0].text for c in api.completions.create(model="tiny", prompt="the film", max_tokens=8, stream=True)
    )
    assert streamed.strip() == plain.choices[0].text
    batch = api.completions.create(model="tiny", prompt=["the film", "a big dog"], max_tokens=8)
    assert [c.text for c in batch.choices] == [
        plain.choices[0].text,
        greedy_reference(tiny_llama_dir, "a big dog", 8, chat=False),
    ]


@pytest.mark.slow
def test_eight_concurrent_requests_get_their_own_answers(server, tiny_llama_dir):
    port, _ = server
    api = client(port)
    prompts = ["translate the dog", "a cat", "the red car", "translate old house", "small green", "sees the cat",
               "the dog runs", "new car"]  # fmt: skip
    expected = {p: greedy_reference(tiny_llama_dir, p, 8, chat=True) for p in prompts}

    def ask(i_prompt):
        i, p = i_prompt
        messages = [{"role": "user", "content": p}]
        if i % 2:  # half of them streamed
            stream = api.chat.completions.create(model="tiny", messages=messages, max_tokens=8, stream=True)
            return p, "".join(c.choices[0].delta.content or "" for c in stream).strip()
        return p, api.chat.completions.create(model="tiny", messages=messages, max_tokens=8).choices[0].message.content

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, enumerate(prompts)))
    assert dict(answers) == expected


@pytest.mark.slow
def test_bad_requests_get_clear_4xx(server):
    import httpx

    port, _ = server
    with pytest.raises(openai.AuthenticationError):
        client(port, key="wrong").models.list()
    api = client(port)
    with pytest.raises(openai.BadRequestError, match="max_tokens 500 exceeds"):
        api.completions.create(model="tiny", prompt="x", max_tokens=500)
    with pytest.raises(openai.BadRequestError, match="temperature must be >= 0"):
        api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], temperature=-1)
    with pytest.raises(openai.BadRequestError, match="top_p must be in"):
        api.completions.create(model="tiny", prompt="x", top_p=1.5)
    with pytest.raises(openai.NotFoundError, match="not found"):
        api.completions.create(model="other", prompt="x")
    url, headers = f"http://127.0.0.1:{port}/v1/completions", {"Authorization": f"Bearer {KEY}"}
    big = httpx.post(url, headers=headers, content=json.dumps({"model": "tiny", "prompt": "x" * 30000}))
    assert big.status_code == 413 and "exceeds the limit" in big.json()["error"]["message"]
    missing = httpx.post(url, headers=headers, json={"model": "tiny"})
    assert missing.status_code == 400 and "prompt" in missing.json()["error"]["message"]


@pytest.mark.slow
def test_port_in_use_is_one_line(server, tiny_llama_dir):
    port, _ = server
    proc = subprocess.run(
        [sys.executable, "-m", "llmtune", "serve", "--model", str(tiny_llama_dir), "--port", str(port)],
        capture_output=True, text=True, env=env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(port) in lines[0] and "--port" in lines[0]


def test_predict_endpoint_for_a_classifier(tiny_wordpiece_dir, tmp_path):
    """/v1/predict returns the records `llmtune predict` writes (in-process app, no socket)."""
    from fastapi.testclient import TestClient

    from llmtune.inference.loader import load_for_inference
    from llmtune.inference.server import ServeOptions, create_app
    from tests.test_predict import bert_head, save_llmtune_config

    model = bert_head(
        tiny_wordpiece_dir, tmp_path / "cls", "AutoModelForSequenceClassification", num_labels=2,
        id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
    )  # fmt: skip
    save_llmtune_config(model, {"task": "sentiment"})
    ctx = load_for_inference(str(model))
    app = create_app(ctx, ServeOptions(model_name="cls"))
    with TestClient(app) as http:
        texts = ["the film was great", "bad", "a very very long and quite boring book"]
        got = http.post("/v1/predict", json={"inputs": texts, "all_scores": True})
        assert got.status_code == 200
        preds = got.json()["predictions"]
        assert [p["text"] for p in preds] == texts
        assert all(p["label"] in ("neg", "pos") and set(p["scores"]) == {"neg", "pos"} for p in preds)
        rows = http.post("/v1/predict", json={"inputs": [{"sentence": "good"}]}).json()["predictions"]
        assert rows[0]["text"] == "good"
        bad = http.post("/v1/predict", json={"inputs": [{"stars": "x"}]})
        assert bad.status_code == 400 and "no text column" in bad.json()["error"]["message"]
        chat = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 400 and "/v1/predict" in chat.json()["error"]["message"]
