"""``llmtune ui`` (issue 26): how fast the runs page shows 200 runs, and whether an open page slows a run.

1. **Runs page with 200 run folders.** One real small run (``sentiment-demo``, a few steps) is
   trained, then its files (config, training log, status, metrics, predictions, card; not the
   weights) are copied into 200 run folders with varied metrics and statuses. A real ``llmtune ui``
   process serves them; measured: ``GET /api/runs`` (the JSON the page polls every 2 s), and in
   headless Chromium the time from opening ``#/runs`` to the 200 rows being in the table.
2. **Cost to a training run.** The same small training run (``sentiment-demo``, N steps) timed
   alone and while the UI has the run's page open in Chromium (polling it every 2 s; the UI only
   reads files), alternating, a few repeats each: wall time of the ``llmtune finetune`` process and
   the run's own ``train_wall_seconds``.

    python benchmarks/bench_ui.py [--part page|cost|all] [--folders 200] [--repeats 3] [--steps 20]

Needs the ``ui`` and ``demo`` extras, selenium and Debian's chromium + chromium-driver. Load
average (``uptime``) is recorded with the figures: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._lmbench import ROOT, update_benchmarks_md

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
RUN_FILES = (
    "llmtune_config.yaml",
    "training_log.jsonl",
    "run_status.json",
    "metrics.json",
    "predictions.jsonl",
    "README.md",
)


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def load() -> str:
    return os.popen("uptime").read().strip()


def train(out: Path, steps: int) -> float:
    cmd = [sys.executable, "-m", "llmtune", "finetune", "--recipe", "sentiment-demo", "--output-dir", str(out),
           "--set", f"train.max_steps={steps}", "--set", "train.logging_steps=1", "--set", "train.eval_strategy=steps",
           "--set", f"train.eval_steps={max(1, steps // 2)}", "--set", "data.max_eval_samples=40",
           "--set", "train.progress=plain"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def fan_out(source: Path, root: Path, n: int) -> None:
    """n run folders from one real run's files: metrics scaled, a mix of statuses."""
    rng = random.Random(0)
    log = [json.loads(line) for line in (source / "training_log.jsonl").read_text().splitlines()]
    status = json.loads((source / "run_status.json").read_text())
    for i in range(n):
        folder = root / f"sweep-{i // 50}" / f"run-{i:03d}"
        folder.mkdir(parents=True)
        for name in RUN_FILES:
            if (source / name).exists() and name not in ("training_log.jsonl", "run_status.json"):
                shutil.copy(source / name, folder / name)
        scale = rng.uniform(0.8, 1.2)
        rows = [
            {k: (v * scale if k in ("loss", "eval_loss", "eval_accuracy") else v) for k, v in r.items()} for r in log
        ]
        (folder / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        state = dict(status, status=("finished", "finished", "stopped", "running")[i % 4], pid=999_999)
        (folder / "run_status.json").write_text(json.dumps(state))
        if state["status"] != "finished":
            (folder / "metrics.json").unlink(missing_ok=True)


def start_ui(runs: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llmtune", "ui", "--runs-dir", str(runs), "--port", str(port)],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/", timeout=5).status_code == 200:  # not /api/runs: the first read is measured
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit("llmtune ui did not start")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def runs_page(url: str, n: int, repeats: int) -> dict:
    import httpx
    from selenium.webdriver.common.by import By

    t = time.perf_counter()
    httpx.get(url + "/api/runs", timeout=120)
    first = time.perf_counter() - t
    api = []
    for _ in range(repeats * 2):
        t = time.perf_counter()
        rows = httpx.get(url + "/api/runs", timeout=60).json()["runs"]
        api.append(time.perf_counter() - t)
    assert len(rows) == n, len(rows)
    driver = browser()
    shown = []
    try:
        for _ in range(repeats):
            driver.get("about:blank")
            t = time.perf_counter()
            driver.get(url + "/#/runs")
            while len(driver.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")) < n:
                time.sleep(0.02)
            shown.append(time.perf_counter() - t)
    finally:
        driver.quit()
    return {"first": first, "api": api, "page": shown}


def training_cost(work: Path, steps: int, repeats: int) -> dict:
    from selenium.webdriver.common.by import By

    runs = work / "cost"
    runs.mkdir()
    proc, url = start_ui(runs)
    out: dict[str, list] = {"alone": [], "watched": [], "alone_train": [], "watched_train": []}
    try:
        for i in range(repeats):
            for mode in ("alone", "watched"):
                folder = runs / f"{mode}-{i}"
                driver = None
                if mode == "watched":
                    driver = browser()
                    driver.get(url + f"/#/run/{folder.name}")  # the page polls it every 2 s from the start
                try:
                    out[mode].append(train(folder, steps))
                    if driver is not None:
                        assert driver.find_elements(By.ID, "run-title")
                finally:
                    if driver is not None:
                        driver.quit()
                metrics = json.loads((folder / "metrics.json").read_text())
                out[f"{mode}_train"].append(metrics["train"]["train_wall_seconds"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms (min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})"


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} s ± {(max(values) - min(values)) / 2:.1f} (min {min(values):.1f}, max {max(values):.1f})"


def loaded(*uptimes: str) -> str:
    """A warning line when the 1-minute load average was above the cores (timings then carry that noise)."""
    cores = os.cpu_count() or 1
    loads = [float(u.split("load average:")[1].split(",")[0]) for u in uptimes if "load average:" in u]
    if loads and max(loads) > cores:
        return (
            f"**Measured on a loaded machine** (1-minute load average up to {max(loads):.1f} on {cores} cores, other jobs "
            "running): the figures carry that load's noise; rerun on an idle machine for tighter ones.\n"
        )
    return ""


def page_section(page: dict, n: int, repeats: int, before: str, after: str) -> str:
    return f"""## `llmtune ui`: the runs page with {n} runs, and the cost of an open page to a run (issue 26)

`python benchmarks/bench_ui.py --part page --folders {n} --repeats {repeats}` (CPU, headless Chromium through
Selenium, a real `llmtune ui` process). Load before: `{before}`; after: `{after}`.

{loaded(before, after)}
**Runs page, {n} run folders** (one real `sentiment-demo` run's files copied with varied metrics and statuses,
4 sweep folders). The server keeps each run's row until that run's files change (size/mtime), so the first
request reads every folder and the polls after it (every 2 s) re-read only what changed; medians of the repeats:

| what | time |
|---|---|
| first `GET /api/runs` after the server starts (every folder's config, log, status and metrics read) | {page["first"] * 1000:.0f} ms |
| `GET /api/runs` again, nothing changed (what each 2 s poll costs) | {ms(page["api"])} |
| opening `#/runs` in Chromium until all {n} rows are in the table | {ms(page["page"])} |
"""


def cost_section(cost: dict, steps: int, repeats: int, before: str, after: str) -> str:
    alone, watched = statistics.mean(cost["alone"]), statistics.mean(cost["watched"])
    noise = max(max(v) - min(v) for v in (cost["alone"], cost["watched"]))
    verdict = "within the run-to-run spread" if abs(watched - alone) <= noise else "larger than the run-to-run spread"
    return f"""**Cost to a training run** (`python benchmarks/bench_ui.py --part cost --repeats {repeats} --steps {steps}`:
`sentiment-demo`, {steps} steps, eval every {max(1, steps // 2)}; alone vs with the run's page open in Chromium polling it every
2 s; alternating, {repeats} each; mean ± half the range). Load before: `{before}`; after: `{after}`.

{loaded(before, after)}
| | `llmtune finetune` wall time | the run's `train_wall_seconds` |
|---|---|---|
| alone | {spread(cost["alone"])} | {spread(cost["alone_train"])} |
| page open | {spread(cost["watched"])} | {spread(cost["watched_train"])} |

Difference of the means: {watched - alone:+.1f} s ({(watched - alone) / alone * 100:+.1f} %) of the process wall time; the
spread between repeats of one condition is up to {noise:.1f} s: {verdict}. The UI only reads the run's files (the
page polls two small JSON answers every 2 s); what these runs can resolve is bounded by that spread.
"""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=("page", "cost", "all"), default="all")
    p.add_argument("--folders", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cost-results", help="write the cost part's raw results (JSON) here")
    args = p.parse_args()
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        raise SystemExit(f"needs {CHROMIUM} and {DRIVER} (Debian's chromium and chromium-driver)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.part in ("page", "all"):
            before = load()
            source = work / "source"
            train(source, 6)
            runs = work / "many"
            fan_out(source, runs, args.folders)
            proc, url = start_ui(runs)
            try:
                page = runs_page(url, args.folders, args.repeats)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            body = page_section(page, args.folders, args.repeats, before, load())
            update_benchmarks_md("ui", body)
            print(json.dumps(page), body, sep="\n")
        if args.part in ("cost", "all"):
            before = load()
            cost = training_cost(work, args.steps, args.repeats)
            after = load()
            if args.cost_results:
                Path(args.cost_results).write_text(json.dumps({"cost": cost, "before": before, "after": after}))
            body = cost_section(cost, args.steps, args.repeats, before, after)
            update_benchmarks_md("ui-cost", body)
            print(json.dumps(cost), body, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
