"""GPU training throughput: tokens/s, MFU and peak memory of llmtune's training path, each speed
option on and off, and a plain ``transformers.Trainer`` script as the baseline, in one command.

    python benchmarks/bench_gpu.py --quick          # <= 5 minutes on one H100/H200-class GPU
    python benchmarks/bench_gpu.py                  # more measured steps per variant
    python benchmarks/bench_gpu.py --smoke          # CPU: tiny model, 3 steps (the test suite runs this)
    python benchmarks/bench_gpu.py --record DIR/results.md   # a run made elsewhere -> BENCHMARKS.md

Model: a Llama-style decoder from random init (~1B parameters: hidden 2048, 16 layers, 32 heads,
8 KV heads, MLP 8192, vocabulary 32000, tied embeddings), bf16 mixed precision, sequence length
2048. Data: synthetic documents of random tokens whose lengths follow a log-normal distribution
(median ~450 tokens, clipped to [16, 2048]), so packing has real padding to remove; every variant
trains on the same documents with the same number of documents per step.

Variants (each in its own process on a GPU, so compile caches, Liger's patches and memory
statistics do not leak between them):

- ``reference``: llmtune, precision auto (bf16), FlashAttention-2 when flash-attn is installed
  (else sdpa), padding-free packing (``clm`` ``options.packing=documents``, rows of 2048),
  Liger kernels when installed, fused AdamW, no compile, no gradient checkpointing;
- the reference with one option changed: ``+compile``, ``-liger`` / ``+liger``, ``sdpa`` (when the
  reference has FlashAttention-2), ``padded`` (one document per row, padded batches),
  ``+grad-ckpt``, ``chunked loss`` (``train.loss_chunk_size=4096``, in place of Liger's fused
  cross-entropy when the reference has it: the two exclude each other);
- ``plain Trainer``: ``transformers.Trainer`` with default ``TrainingArguments`` except
  ``bf16=True`` (on a GPU), the batch size and the step count, and
  ``DataCollatorForLanguageModeling(mlm=False)`` (padded batches): what a short hand-written
  script does.

Options this machine cannot run (no flash-attn, no liger-kernel, no CUDA) are listed as skipped
with the reason. Results: ``results.json`` and ``results.md`` in ``--out``, and (unless
``--no-write``) the ``bench_gpu`` section of BENCHMARKS.md.

MFU (model FLOPs utilisation), counting only useful (non-pad) tokens::

    MFU = (6 * N * tokens_per_s + attention_flops_per_s) / peak_dense_bf16_flops

    N                    = parameters doing matmuls per token: every parameter except the input
                           embedding table (with tied embeddings the shared matrix counts once,
                           as the output projection)
    attention_flops_per_s = 12 * n_layers * hidden * sum(doc_len**2) / seconds
                           (QK^T and attention x V, forward + backward = 3x forward, per document,
                           without discounting the causal half: the PaLM appendix B convention)
    peak_dense_bf16_flops = the GPU's dense (no sparsity) bf16 tensor-core peak: H100/H200 SXM
                           989e12, H100 PCIe 756e12, A100 312e12, L40S 362e12, L4 121e12,
                           A10G 125e12 (``--peak-tflops`` for others)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 125.0,
}
FULL = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=32000,
    seq=2048,
    docs_per_step=16,
    median_doc=450,
)
CHUNK, CHUNK_SMOKE = 4096, 32  # train.loss_chunk_size of the chunked-loss variant
SMOKE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    seq=128,
    docs_per_step=4,
    median_doc=40,
)


# ---------------------------------------------------------------------------------------------
# one variant (runs in a child process on a GPU, in-process in smoke mode)


def synthetic_documents(n: int, vocab: int, seq: int, median: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), 0.8, size=n), 16, seq).astype(int)
    return [rng.integers(3, vocab, size=int(length)).tolist() for length in lengths]


def tiny_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer with ``vocab`` entries (pad 0, eos 1, unk 2): the collators need one."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>")),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def model_config(size: dict) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        **{k: size[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")},
        num_attention_heads=size["num_attention_heads"],
        num_key_value_heads=size["num_key_value_heads"],
        max_position_embeddings=size["seq"],
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        use_cache=False,
    )


def matmul_params(model: Any) -> int:
    """N of the MFU formula: every parameter but the input embedding (tied: counted once)."""
    total = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return total if tied else total - model.get_input_embeddings().weight.numel()


class TokenCounter:
    """Wraps a collator: records, batch by batch, the real (non-pad) tokens and sum(len²)."""

    def __init__(self, collator: Any):
        self.collator = collator
        self.batches: list[tuple[int, int]] = []

    def __call__(self, features: list[dict]) -> Any:
        lengths = [len(f["input_ids"]) for f in features]
        self.batches.append((sum(lengths), sum(n * n for n in lengths)))
        return self.collator(features)


def step_timer(warmup: int, measure: int, cuda: bool) -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = self.t1 = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, warmup + measure):
                if cuda:
                    import torch

                    torch.cuda.synchronize()
                if state.global_step == warmup:
                    self.t0 = time.perf_counter()
                else:
                    self.t1 = time.perf_counter()

    return StepTimer()


def run_variant(spec: dict) -> dict:
    """Train one variant for warmup + measure steps; return its throughput figures."""
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM

    size = SMOKE if spec["smoke"] else FULL
    cuda = torch.cuda.is_available() and not spec["smoke"]
    warmup, measure = spec["warmup"], spec["measure"]
    steps = warmup + measure
    docs = synthetic_documents(size["docs_per_step"] * (steps + 2), size["vocab_size"], size["seq"], size["median_doc"])
    dataset = Dataset.from_dict({"input_ids": docs})
    tok = tiny_tokenizer(size["vocab_size"])
    torch.manual_seed(0)
    config = model_config(size)
    with torch.device("cuda") if cuda else contextlib.nullcontext():
        model = LlamaForCausalLM(config)
    out_dir = Path(spec["out"]) / f"run-{spec['name'].replace(' ', '_')}"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timer = step_timer(warmup, measure, cuda)
    if spec["kind"] == "plain":
        trainer, counter = plain_trainer(model, tok, dataset, size, steps, out_dir, cuda)
    else:
        trainer, counter = llmtune_trainer(model, tok, dataset, size, steps, out_dir, spec["options"])
    trainer.add_callback(timer)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    seconds = timer.t1 - timer.t0
    # the batches of the measured steps (accelerate may fetch one batch ahead: order is kept)
    measured = counter.batches[warmup:steps]
    tokens = sum(t for t, _ in measured)
    squares = sum(s for _, s in measured)
    n = matmul_params(trainer.accelerator.unwrap_model(trainer.model))
    flops = 6 * n * tokens + 12 * config.num_hidden_layers * config.hidden_size * squares
    result = {
        "name": spec["name"],
        "tokens_per_s": tokens / seconds,
        "model_tflops_per_s": flops / seconds / 1e12,
        "seconds_measured": seconds,
        "steps_measured": measure,
        "useful_tokens_measured": tokens,
        "wall_s": wall,
        "params_matmul": n,
        "final_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None),
    }
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def llmtune_trainer(model: Any, tok: Any, dataset: Any, size: dict, steps: int, out_dir: Path, options: dict):
    """The real llmtune path: config -> preflight -> model checks -> build_trainer (clm task)."""
    from llmtune import hardware
    from llmtune.resolve import build_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext
    from llmtune.trainer import build_trainer

    tree = {
        "task": "clm",
        "model": {"attn_implementation": options["attn"]},
        "train": {
            "output_dir": str(out_dir),
            "max_steps": steps,
            "batch_size": size["docs_per_step"],
            "learning_rate": 3e-4,
            "eval_strategy": "no",
            "logging_steps": max(1, steps // 4),
            "precision": "auto",
            "compile": options["compile"],
            "liger_kernel": options["liger"],
            "gradient_checkpointing": options["grad_ckpt"],
            "loss_chunk_size": options.get("chunk"),
            "seed": 0,
        },
        "options": {"block_size": size["seq"], "packing": "documents" if options["packing"] else "padded"},
    }
    cfg = build_config(tree, validate=False)
    task = get_task("clm")
    ctx = RunContext(cfg=cfg, training=True)
    ctx.state["performance"] = hardware.preflight(cfg)
    ctx.tokenizer, ctx.model = tok, model
    hardware.apply_to_model(cfg, model)
    task.check_model(ctx, model)
    trainer = build_trainer(ctx, task, out_dir, {"train": dataset}, has_eval=False)
    trainer.args.save_strategy = type(trainer.args.save_strategy)("no")
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    return trainer, counter


def plain_trainer(model: Any, tok: Any, dataset: Any, size: dict, steps: int, out_dir: Path, cuda: bool):
    """What a plain script does: default TrainingArguments (+ bf16 on a GPU), padded batches."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=size["docs_per_step"],
        max_steps=steps,
        learning_rate=3e-4,
        bf16=cuda,
        logging_steps=max(1, steps // 4),
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    counter = TokenCounter(DataCollatorForLanguageModeling(tok, mlm=False))
    return Trainer(model=model, args=args, train_dataset=dataset, data_collator=counter), counter


# ---------------------------------------------------------------------------------------------
# the variants, the machine, the report


def machine_info() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()}
    import transformers

    info["transformers"] = transformers.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def peak_tflops(gpu: str | None, override: float | None) -> float | None:
    if override:
        return override
    if not gpu:
        return None
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in gpu:
            return PEAK_BF16_TFLOPS[key]
    return None


def variants(smoke: bool, cuda: bool) -> tuple[list[dict], list[str]]:
    """(variants to run, skipped lines with reasons)."""
    from llmtune import hardware

    fa2 = cuda and hardware.flash_attn_installed()
    liger = cuda and hardware.liger_installed()
    compile_ok = not smoke and hardware.compile_problem("cuda" if cuda else "cpu", None) is None
    ref = {"attn": "flash_attention_2" if fa2 else "sdpa", "packing": True, "liger": liger, "compile": False}
    ref["grad_ckpt"] = False
    ref["chunk"] = None
    runs = [("reference", ref)]
    skipped = []
    if compile_ok:
        runs.append(("+compile", {**ref, "compile": True}))
    else:
        skipped.append(
            "+compile: " + ("smoke mode (compiling takes minutes on CPU)" if smoke else "torch.compile fails here")
        )
    if liger:
        runs.append(("-liger", {**ref, "liger": False}))
    else:
        skipped.append(
            "+liger: " + ("no CUDA GPU" if not cuda else "liger-kernel not installed (pip install 'llmtune[liger]')")
        )
    if fa2:
        runs.append(("sdpa instead of FlashAttention-2", {**ref, "attn": "sdpa"}))
    else:
        skipped.append(
            "FlashAttention-2: " + ("no CUDA GPU" if not cuda else "flash-attn not installed (pip install flash-attn)")
        )
    runs.append(("padded instead of packed", {**ref, "packing": False}))
    runs.append(("+grad-ckpt", {**ref, "grad_ckpt": True}))
    chunked = "chunked loss instead of Liger" if ref["liger"] else "+chunked loss"
    runs.append((chunked, {**ref, "liger": False, "chunk": CHUNK_SMOKE if smoke else CHUNK}))
    specs = [{"name": name, "kind": "llmtune", "options": opts} for name, opts in runs]
    specs.append({"name": "plain Trainer", "kind": "plain", "options": {}})
    return specs, skipped


def describe(opts: dict) -> str:
    if not opts:
        return "transformers defaults + bf16, padded"
    return ", ".join(
        [
            opts["attn"],
            "packed" if opts["packing"] else "padded",
            "compile" if opts["compile"] else "no compile",
            "Liger" if opts["liger"] else "no Liger",
            "grad ckpt" if opts["grad_ckpt"] else "no grad ckpt",
            *([f"loss in slices of {opts['chunk']}"] if opts.get("chunk") else []),
        ]
    )


def run_child(spec: dict, timeout: float) -> dict:
    """One variant in a fresh process; a failure (e.g. out of memory) is recorded, not fatal."""
    path = Path(spec["out"]) / f"spec-{spec['name'].replace(' ', '_')}.json"
    path.write_text(json.dumps(spec))
    result_path = path.with_suffix(".result.json")
    log = path.with_suffix(".log")
    try:
        with open(log, "w") as fh:
            code = subprocess.call(
                [sys.executable, __file__, "--child", str(path), "--child-result", str(result_path)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
    except subprocess.TimeoutExpired:
        return {"name": spec["name"], "error": f"timed out after {timeout:.0f} s"}
    if code != 0 or not result_path.is_file():
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["no output"]
        return {"name": spec["name"], "error": f"exit {code}: {tail[0][:200]}"}
    return json.loads(result_path.read_text())


def report(results: list[dict], skipped: list[str], info: dict, peak: float | None, args: Any, spec_of: dict) -> str:
    plain = next((r for r in results if r["name"] == "plain Trainer" and "error" not in r), None)
    rows = ["| variant | settings | tokens/s | model TFLOP/s | MFU | peak mem (GiB) | vs plain Trainer |"]
    rows.append("|---|---|---|---|---|---|---|")
    for r in results:
        settings = describe(spec_of[r["name"]])
        if "error" in r:
            rows.append(f"| {r['name']} | {settings} | failed: {r['error']} | | | | |")
            continue
        mfu = f"{100 * r['model_tflops_per_s'] / peak:.1f} %" if peak else "n/a"
        mem = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "n/a (CPU)"
        ratio = f"x{r['tokens_per_s'] / plain['tokens_per_s']:.2f}" if plain else "n/a"
        rows.append(
            f"| {r['name']} | {settings} | {r['tokens_per_s']:,.0f} | {r['model_tflops_per_s']:.1f} | {mfu} "
            f"| {mem} | {ratio} |"
        )
    size = SMOKE if args.smoke else FULL
    where = info.get("gpu", "CPU (smoke mode)")
    mode = "--smoke" if args.smoke else ("--quick" if args.quick else "full")
    lines = [
        "## GPU training throughput (bench_gpu.py, issue 12)",
        "",
        f"`python benchmarks/bench_gpu.py {mode if mode != 'full' else ''}`".replace(" `", "`")
        + f" - {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {where}; torch {info['torch']}, "
        f"transformers {info['transformers']}. Llama-style model, hidden {size['hidden_size']}, "
        f"{size['num_hidden_layers']} layers, {results[0].get('params_matmul', 0) / 1e6:,.2f} M matmul parameters, "
        f"sequence {size['seq']}, {size['docs_per_step']} synthetic documents per step (median {size['median_doc']} "
        f"tokens); {args.warmup} warm-up + {args.measure} measured steps per variant. Peak dense bf16: "
        f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}.",
        "",
        *rows,
        "",
    ]
    if skipped:
        lines.append("Skipped here: " + "; ".join(skipped) + ".")
    lines.append("tokens/s counts useful (non-pad) tokens; MFU formula in the docstring of benchmarks/bench_gpu.py.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps: the whole run within ~5 minutes on a GPU")
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny model, 3 steps per variant, in-process")
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json / results.md (default: a temp dir)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all variants: one starts only while time is left, and may use only what is left",
    )
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument(
        "--record",
        type=Path,
        default=None,
        help="put a results.md made on another machine (benchmarks/gpu_check.sh) into BENCHMARKS.md, and stop",
    )
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.record:
        from _lmbench import update_benchmarks_md

        body = args.record.read_text(encoding="utf-8")
        if not body.startswith("## GPU training throughput"):
            print(f"{args.record} is not a bench_gpu.py results.md", file=sys.stderr)
            return 2
        print(f"written to {update_benchmarks_md('bench_gpu', body)}")
        return 0
    if args.child:  # one variant, in this (fresh) process
        result = run_variant(json.loads(args.child.read_text()))
        args.child_result.write_text(json.dumps(result))
        return 0

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("no CUDA GPU here: run with --smoke for the CPU check (tiny model, 3 steps)", file=sys.stderr)
        return 2
    args.warmup, args.measure = (1, 2) if args.smoke else ((3, 8) if args.quick else (5, 30))
    out = args.out or Path(tempfile.mkdtemp(prefix="llmtune-bench-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    peak = peak_tflops(info.get("gpu"), args.peak_tflops)
    specs, skipped = variants(args.smoke, cuda)
    spec_of = {s["name"]: s["options"] for s in specs}
    # The plain Trainer baseline runs right after the reference, so a run cut short by --budget
    # still compares them.
    specs.sort(key=lambda spec: {"reference": 0, "plain Trainer": 1}.get(spec["name"], 2))
    deadline = time.monotonic() + args.budget if args.budget else None
    results: list[dict] = []
    body = ""
    for spec in specs:
        spec.update(smoke=args.smoke, warmup=args.warmup, measure=args.measure, out=str(out))
        left = deadline - time.monotonic() if deadline else None
        if left is not None and left < 30:
            result = {"name": spec["name"], "error": f"not run: --budget {args.budget:.0f} s used up"}
        else:
            print(f"== {spec['name']}: {describe(spec['options'])}", flush=True)
            limit = 240 if args.quick else 900
            limit = min(limit, left) if left is not None else limit
            result = run_variant(spec) if args.smoke else run_child(spec, timeout=limit)
        print(json.dumps(result), flush=True)
        results.append(result)
        # written after every variant: a run stopped from outside keeps what it measured
        body = report(results, skipped, info, peak, args, spec_of)
        (out / "results.json").write_text(
            json.dumps({"machine": info, "peak_bf16_tflops": peak, "skipped": skipped, "results": results}, indent=1)
        )
        (out / "results.md").write_text(body + "\n")
    print(body)
    if not args.no_write and not args.smoke:
        from _lmbench import update_benchmarks_md

        print(f"written to {update_benchmarks_md('bench_gpu', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
