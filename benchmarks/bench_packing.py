"""Padding-free packing vs padded batches, side by side in one run (CPU).

1. ``sft``: a tiny Llama (the ``llama-tiny`` preset, random init) on SAMSum dialogues turned into
   chat (one message per dialogue line, alternating user/assistant; the assistant lines are the
   targets), from ``../shared/data/samsum/validation.jsonl``: padded random batches vs
   ``options.packing=true`` (the same examples per step, padding-free with per-example
   attention), plus llmtune's default length-grouped padded batches for reference.
2. ``clm``: the same tiny Llama from scratch on WikiText-2 paragraphs (one document per line,
   a BPE tokenizer trained by ``llmtune tokenizer train``): ``options.packing=padded`` vs
   ``documents``, plus ``blocks`` (concatenated, cross-document attention) for reference.

Every run goes through the real CLI in its own process, one epoch, same seed. Useful tokens are
the non-pad tokens of the training split (every example is seen once), so useful tokens/s =
those / ``train_runtime``. The loss check: padded random batches and packed batches hold the same
examples in the same order, so their logged training losses must agree step by step (up to
float rounding), and so must the held-out per-token loss.

    python benchmarks/bench_packing.py [--sft-train 96] [--clm-docs 320] [--shared DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lmbench import ROOT, read_metrics, run_child, update_benchmarks_md


def samsum_chat(path: Path) -> list[dict]:
    """SAMSum dialogues as chat: one message per line, roles alternating user/assistant."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        turns = [t.strip() for t in json.loads(line)["dialogue"].replace("\r\n", "\n").split("\n") if t.strip()]
        if len(turns) < 2:
            continue
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        if messages[-1]["role"] == "user":
            messages = messages[:-1]
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def losses(out: Path) -> dict[int, float]:
    log = [json.loads(x) for x in (out / "training_log.jsonl").read_text().splitlines() if x.strip()]
    return {e["step"]: e["loss"] for e in log if "loss" in e}


def useful_tokens_sft(data: Path, max_length: int) -> tuple[int, int]:
    """Non-pad tokens of the sft train split and its number of examples (as llmtune encodes them)."""
    from transformers import AutoTokenizer

    from llmtune.paths import resolve_location
    from llmtune.tasks.sft.data import encode_conversation

    tok = AutoTokenizer.from_pretrained(resolve_location("builtin:tiny_chat_llama"))
    total = n = 0
    for line in (data / "train.jsonl").read_text(encoding="utf-8").splitlines():
        ids, labels = encode_conversation(tok, json.loads(line)["messages"], max_length)
        if any(x != -100 for x in labels):
            total, n = total + len(ids), n + 1
    return total, n


def useful_tokens_clm(data: Path, tok_dir: Path, block: int, layout: str) -> tuple[int, int]:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from llmtune.tasks.lm.data import pack_dataset

    tok = AutoTokenizer.from_pretrained(tok_dir)
    lines = (data / "train.txt").read_text(encoding="utf-8").splitlines()
    packed = pack_dataset(Dataset.from_dict({"text": lines}), tok, "clm", block, "text", layout=layout)
    return sum(len(x) for x in packed["input_ids"]), len(packed)


def run(name: str, args: list[str], work: Path) -> dict:
    """One CLI run in its own process (one thread), Trainer.train timed by _timed_llmtune.py."""
    out = work / f"out-{name}"
    times = work / f"{name}.times.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(OMP_NUM_THREADS="1", LLMTUNE_BENCH_TIMES=str(times))
    with open(work / f"{name}.log", "w") as fh:
        code = subprocess.call(
            [sys.executable, str(Path(__file__).parent / "_timed_llmtune.py"), *args, "-o", str(out)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if code != 0:
        print((work / f"{name}.log").read_text()[-3000:])
        raise SystemExit(f"{name} failed ({code})")
    return {"metrics": read_metrics(out), "losses": losses(out), **json.loads(times.read_text())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 384 dialogues = 48 steps: with fewer, costs paid once per run inside Trainer.train (the first
    # steps' warm-up, the checkpoint, the curves) weigh on the ratio as much as the steps do
    ap.add_argument("--sft-train", type=int, default=384, help="SAMSum dialogues to train on")
    ap.add_argument("--sft-eval", type=int, default=40)
    ap.add_argument("--sft-max-length", type=int, default=1024)
    ap.add_argument("--logging-steps", type=int, default=2)
    ap.add_argument("--clm-docs", type=int, default=320, help="WikiText-2 paragraphs to train on")
    ap.add_argument("--clm-eval", type=int, default=60, help="held-out paragraphs (the last ones)")
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the shared data folder")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    samsum = args.shared / "data" / "samsum" / "validation.jsonl"
    wikitext = args.shared / "data" / "wikitext2" / "wiki.valid.tokens"
    for path in (samsum, wikitext):
        if not path.is_file():
            raise SystemExit(f"{path} not found: pass --shared DIR (the folder holding data/samsum, data/wikitext2)")
    work = Path(tempfile.mkdtemp(prefix="llmtune-bench-packing-"))
    os.environ["HF_HOME"] = str(work / "hf")  # a fresh datasets cache for the children
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    common = ["--epochs", "1", "--batch-size", str(args.batch_size), "--seed", "0", "--set", "train.eval_strategy=no"]
    common += ["--set", f"train.logging_steps={args.logging_steps}", "--set", "train.save_total_limit=1"]
    results: dict[str, dict] = {}

    # ---- sft on SAMSum chat -------------------------------------------------------------------
    chats = samsum_chat(samsum)
    sft_data = work / "samsum-chat"
    sft_data.mkdir()
    write_jsonl(sft_data / "train.jsonl", chats[: args.sft_train])
    write_jsonl(sft_data / "validation.jsonl", chats[args.sft_train : args.sft_train + args.sft_eval])
    from llmtune.presets import get_preset

    # llmtune cuts sft examples at data.max_length, up to the model's positions
    sft_limit = min(args.sft_max_length, get_preset("llama-tiny")["max_position_embeddings"])
    sft_tokens, sft_rows = useful_tokens_sft(sft_data, sft_limit)
    sft_args = [
        "finetune", "--task", "sft", "--set", "model.name_or_path=null", "--set", "model.config=llama-tiny", "--set", "model.tokenizer=builtin:tiny_chat_llama",
        "--dataset", str(sft_data), "--lr", "1e-3", "--set", f"data.max_length={args.sft_max_length}",
        "--set", "options.num_samples=0", "--set", "train.gradient_accumulation_steps=1", *common,
    ]  # fmt: skip
    sft_variants = {
        "sft padded (random batches)": ["--set", "options.packing=false", "--set", "train.group_by_length=false"],
        "sft packed (padding-free)": ["--set", "options.packing=true"],
        "sft padded (length-grouped)": ["--set", "options.packing=false", "--set", "train.group_by_length=true"],
    }
    for name, extra in sft_variants.items():
        print(f"== {name}", flush=True)
        results[name] = run(name.split(" (")[0].replace(" ", "-") + str(len(results)), [*sft_args, *extra], work)
        results[name]["useful_tokens"] = sft_tokens

    # ---- clm from scratch on WikiText-2 -------------------------------------------------------
    lines = [x.strip() for x in wikitext.read_text(encoding="utf-8").splitlines()]
    docs = [x for x in lines if x and not x.startswith("=")]
    clm_data = work / "wikitext"
    clm_data.mkdir()
    (clm_data / "train.txt").write_text("\n".join(docs[: args.clm_docs]) + "\n", encoding="utf-8")
    (clm_data / "validation.txt").write_text("\n".join(docs[-args.clm_eval :]) + "\n", encoding="utf-8")
    tok_dir = work / "tok"
    code, _, _ = run_child(
        ["tokenizer", "train", "--dataset", str(clm_data / "train.txt"), "--objective", "clm", "--type", "bpe",
         "--vocab-size", "8000", "-o", str(tok_dir)],
        work / "tok.log",
    )  # fmt: skip
    if code != 0:
        raise SystemExit((work / "tok.log").read_text()[-2000:])
    clm_args = [
        "pretrain", "--objective", "clm", "--model-config", "llama-tiny", "--tokenizer", str(tok_dir),
        "--dataset", str(clm_data), "--block-size", str(args.block), "--lr", "1e-3",
        "--set", "options.eval_on_start=false", *common,
    ]  # fmt: skip
    clm_variants = {
        "clm padded (one document per row)": "padded",
        "clm packed (documents, padding-free)": "documents",
        "clm blocks (concatenated, cross-document attention)": "blocks",
    }
    for name, layout in clm_variants.items():
        print(f"== {name}", flush=True)
        results[name] = run(f"clm-{layout}", [*clm_args, "--set", f"options.packing={layout}"], work)
        results[name]["useful_tokens"], _ = useful_tokens_clm(clm_data, tok_dir, args.block, layout)

    # ---- report -------------------------------------------------------------------------------
    table = [
        "| run | useful tokens | train CPU s | useful tokens / CPU s | speed-up (CPU) | train wall s "
        "| useful tokens / wall s | speed-up (wall) | held-out per-token loss |"
    ]
    table.append("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for group, base_name, packed_name in (
        ("sft", "sft padded (random batches)", "sft packed (padding-free)"),
        ("clm", "clm padded (one document per row)", "clm packed (documents, padding-free)"),
    ):
        base = results[base_name]
        for name, r in results.items():
            if not name.startswith(group):
                continue
            r["tps"] = r["useful_tokens"] / r["cpu_s"]
            r["tps_wall"] = r["useful_tokens"] / r["wall_s"]
        for name, r in results.items():
            if not name.startswith(group):
                continue
            ev = r["metrics"].get("eval", {})
            table.append(
                f"| {name} | {r['useful_tokens']:,} | {r['cpu_s']:.1f} | {r['tps']:,.0f} | x{r['tps'] / base['tps']:.2f} "
                f"| {r['wall_s']:.1f} | {r['tps_wall']:,.0f} | x{r['tps_wall'] / base['tps_wall']:.2f} "
                f"| {ev.get('eval_loss', float('nan')):.4f} |"
            )
        packed = results[packed_name]
        common_steps = sorted(set(base["losses"]) & set(packed["losses"]))
        diff = max(abs(base["losses"][s] - packed["losses"][s]) for s in common_steps)
        summary[group] = {
            "speedup": packed["tps"] / base["tps"],
            "speedup_wall": packed["tps_wall"] / base["tps_wall"],
            "max_loss_diff": diff,
            "steps": common_steps[-1],
            "eval_diff": abs(packed["metrics"]["eval"]["eval_loss"] - base["metrics"]["eval"]["eval_loss"]),
        }
        print(f"{group}: packed/padded useful tokens/s x{summary[group]['speedup']:.2f}; "
              f"max |loss diff| over {len(common_steps)} logged steps {diff:.2e}")  # fmt: skip

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (1-minute load average {os.getloadavg()[0]:.1f} at the end)"
    lines_out = [
        "## Padding-free packing vs padded batches (CPU, issue 12)",
        "",
        f"`python benchmarks/bench_packing.py --sft-train {args.sft_train} --clm-docs {args.clm_docs} --shared /work/shared` - {started}; "
        f"{machine}; each run in its own process, 1 thread, one epoch, batch {args.batch_size}, seed 0.",
        "",
        f"- sft: `llama-tiny` preset (random init, 4 layers, hidden 256) with the `tiny_chat_llama` tokenizer on "
        f"{sft_rows} SAMSum dialogues as chat (one message per line, alternating user/assistant; assistant lines "
        f"are the targets), max_length {sft_limit}; held out: the next {args.sft_eval} dialogues.",
        f"- clm: the same architecture from scratch on {args.clm_docs} WikiText-2 paragraphs (one document per "
        f"line), BPE 8000 trained by `llmtune tokenizer train`, block {args.block}; held out: the last {args.clm_eval} paragraphs.",
        "",
        *table,
        "",
    ]
    for group in ("sft", "clm"):
        s = summary[group]
        verdict = "PASS" if s["speedup"] >= 1.5 else "below the 1.5x target"
        lines_out.append(
            f"- **{group}**: packed / padded (random batches) useful tokens per CPU second = **x{s['speedup']:.2f}** "
            f"({verdict}; x{s['speedup_wall']:.2f} in wall time); "
            f"training loss at every logged step up to step {s['steps']}: max |difference| {s['max_loss_diff']:.1e} "
            f"(the same examples per step, so the same loss up to float rounding); held-out per-token loss "
            f"difference {s['eval_diff']:.1e}."
        )
    lines_out += [
        "",
        "CPU s = `time.process_time()` of `Trainer.train` in a one-thread process (benchmarks/_timed_llmtune.py): "
        "the compute a configuration needs, even when other jobs share the cores. "
        "Useful tokens = non-pad tokens of the training split (each example seen once); `blocks` has no padding "
        "either but lets documents attend to each other, so its loss is not comparable. The length-grouped "
        "padded run sees different batches (llmtune's default sampler), so its loss differs by sampling, not "
        "by packing. Ratios come from runs made back to back in one invocation.",
    ]
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines_out))
    if not args.no_write:
        body = "\n".join(lines_out)
        print(f"written to {update_benchmarks_md('bench_packing', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
