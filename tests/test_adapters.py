"""Adapters (LoRA / DoRA / IA3 through peft) for every task, saving both ways, QLoRA refusal, export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import (
    make_ner_rows,
    make_qa_rows,
    make_sentiment_rows,
    make_sft_rows,
    make_summary_rows,
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def one_error_line(result) -> str:
    err = result.stderr if hasattr(result, "stderr") else result.output
    lines = [line for line in err.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---- config ------------------------------------------------------------------------------------


def test_peft_config_checks_collected():
    from llmtune.errors import ConfigError
    from llmtune.resolve import build_config

    with pytest.raises(ConfigError) as err:
        build_config({"task": "sentiment", "peft": {"method": "lora", "r": 0, "alpha": -1, "dropout": 1.5}})
    text = str(err.value)
    assert (
        "peft.r must be >= 1" in text
        and "peft.alpha must be > 0" in text
        and "peft.dropout must be >= 0 and < 1" in text
    )
    with pytest.raises(ConfigError) as err:
        build_config({"task": "sentiment", "peft": {"method": "lora2"}})
    assert "peft.method must be one of none, lora, dora, ia3" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_config({"task": "sentiment", "peft": {"load_in_4bit": True}})
    assert "peft.load_in_4bit (QLoRA)" in str(err.value) and "peft.method=lora" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_config({"task": "clm", "model": {"config": "gpt2-tiny", "tokenizer": "x"}, "peft": {"method": "lora"}})
    assert "adapts pretrained weights" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_config({"task": "sentiment", "peft": {"rank": 4}})
    assert "unknown key 'peft.rank'; valid keys under 'peft': method, r, alpha" in str(err.value)


def test_lora_flag_and_dry_run(cli):
    result = cli("finetune", "--task", "ner", "--lora", "--set", "peft.r=4", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "peft:\n  method: lora\n  r: 4\n" in result.output
    result = cli("pretrain", "--objective", "clm", "--model", "x", "--lora", "--dry-run")
    assert result.exit_code == 0 and "method: lora" in result.output


def test_qlora_without_gpu_is_one_line(cli, tiny_bert_dir, sentiment_csv, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    result = cli(
        "finetune", "--model", tiny_bert_dir, "--dataset", sentiment_csv, "-o", out,
        "--lora", "--set", "peft.load_in_4bit=true",
    )  # fmt: skip
    line = one_error_line(result)
    assert "needs a CUDA GPU" in line and "peft.load_in_4bit" in line
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_qlora_quantization_settings():
    from types import SimpleNamespace

    from llmtune.adapters import quantization_kwargs
    from llmtune.resolve import build_config

    cfg = build_config(
        {"task": "sft", "model": {"name_or_path": "x"}, "peft": {"method": "lora", "load_in_4bit": True}}
    )
    kwargs = quantization_kwargs(SimpleNamespace(cfg=cfg, training=True))
    q = kwargs["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert str(q.bnb_4bit_compute_dtype) == "torch.bfloat16" and kwargs["device_map"] == {"": 0}
    # evaluation and full fine-tuning load plain weights
    assert quantization_kwargs(SimpleNamespace(cfg=cfg, training=False)) == {}


def test_target_modules_matching_nothing_name_real_ones(cli, tiny_bert_dir, sentiment_csv, tmp_path):
    result = cli(
        "finetune", "--model", tiny_bert_dir, "--dataset", sentiment_csv, "-o", tmp_path / "o",
        "--lora", "--set", "peft.target_modules=[q_proj, v_proj]",
    )  # fmt: skip
    line = one_error_line(result)
    assert "peft.target_modules [q_proj, v_proj] match nothing in BertForSequenceClassification" in line
    assert "query" in line and "value" in line and "dense" in line
    result = cli(
        "finetune", "--model", tiny_bert_dir, "--dataset", sentiment_csv, "-o", tmp_path / "o2",
        "--lora", "--set", "peft.modules_to_save=[head]",
    )  # fmt: skip
    assert "peft.modules_to_save head not found" in one_error_line(result)


# ---- merged == unmerged -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_merged_logits_equal_unmerged(method, tiny_bert_dir):
    """Merging moves the adapters into the base weights: the same logits (fp32, 1e-4)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from llmtune.adapters import apply_adapters
    from llmtune.resolve import build_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)
    cfg = build_config({"task": "sentiment", "peft": {"method": method, "r": 4, "target_modules": ["all-linear"]}})
    ctx = RunContext(cfg=cfg)
    peft_model = apply_adapters(ctx, model, get_task("sentiment"))
    assert 0 < ctx.state["trainable_params"] < ctx.state["total_params"]
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in names)  # the task head is trained in full
    with torch.no_grad():  # move every adapter away from its identity initialisation
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    peft_model.eval()
    ids = torch.randint(5, 100, (3, 11))
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            plain = base(input_ids=ids).logits
        merged = peft_model.merge_and_unload()(input_ids=ids).logits
    assert not torch.allclose(adapted, plain, atol=1e-3)  # the adapters do change the output
    assert torch.allclose(adapted, merged, atol=1e-4, rtol=0)


# ---- every task: LoRA lowers the loss, saved merged + adapters, loaded both ways by `eval` ------


def _sentiment(root: Path) -> tuple[Path, list[str]]:
    rows = make_sentiment_rows(200)
    write_csv(root / "train.csv", rows[:160])
    write_csv(root / "validation.csv", rows[160:])
    return root, []


def _ner(root: Path) -> tuple[Path, list[str]]:
    rows = make_ner_rows(200)
    write_jsonl(root / "train.jsonl", rows[:160])
    write_jsonl(root / "validation.jsonl", rows[160:])
    return root, []


def _qa(root: Path) -> tuple[Path, list[str]]:
    rows = make_qa_rows(200)
    write_jsonl(root / "train.jsonl", rows[:160])
    write_jsonl(root / "validation.jsonl", rows[160:])
    return root, ["--set", "data.max_length=24", "--set", "options.doc_stride=8"]


def _summarization(root: Path) -> tuple[Path, list[str]]:
    write_jsonl(root / "train.jsonl", make_summary_rows(160, seed=1))
    write_jsonl(root / "validation.jsonl", make_summary_rows(16, seed=2))
    return root, ["--set", "options.max_new_tokens=4", "--set", "options.num_beams=1"]


def _sft(root: Path) -> tuple[Path, list[str]]:
    write_jsonl(root / "train.jsonl", make_sft_rows(160, seed=1))
    write_jsonl(root / "validation.jsonl", make_sft_rows(10, seed=2))
    return root, ["--set", "options.num_samples=2", "--set", "options.max_new_tokens=4"]


def _lm(root: Path) -> tuple[Path, list[str]]:
    from tests.conftest import lm_corpus_lines

    lines = lm_corpus_lines()
    root.mkdir(parents=True)
    (root / "train.txt").write_text("\n".join(lines[:260]) + "\n", encoding="utf-8")
    (root / "validation.txt").write_text("\n".join(lines[260:300]) + "\n", encoding="utf-8")
    return root, ["--block-size", "32", "--set", "options.eval_on_start=false"]


# The tiny random BERT's frozen layers carry almost no signal (attention is near-uniform at init
# scale): its classification tasks learn through LoRA on the word embeddings too.
BERT_TARGETS = ["--set", "peft.target_modules=[query, value, word_embeddings]"]
ALL_LINEAR = ["--set", "peft.target_modules=[all-linear]"]
# task -> (command, model fixture, data builder, eval metric, extra flags)
TASKS = {
    "sentiment": ("finetune", "tiny_bert_dir", _sentiment, "eval_loss", BERT_TARGETS),
    "ner": ("finetune", "tiny_bert_dir", _ner, "eval_loss", BERT_TARGETS),
    "qa": ("finetune", "tiny_bert_dir", _qa, "eval_exact_match", BERT_TARGETS),
    "summarization": ("finetune", "tiny_t5_dir", _summarization, "eval_loss", ALL_LINEAR),
    "sft": ("finetune", "tiny_llama_dir", _sft, "eval_loss", ALL_LINEAR),
    "clm": ("pretrain", "tiny_gpt2_dir", _lm, "eval_loss", ALL_LINEAR),
    "mlm": ("pretrain", "tiny_bert_dir", _lm, "eval_mlm_loss", []),
}


def train_lora(cli, request, task: str, root: Path, *extra: str, steps: int = 30) -> tuple[Path, Path, dict]:
    command, model_fixture, build, _, targets = TASKS[task]
    data, task_args = build(root / "data")
    out = root / "out"
    flag = ["--task", task] if command == "finetune" else ["--objective", task]
    result = cli(
        command, *flag, "--model", request.getfixturevalue(model_fixture), "--dataset", data, "-o", out,
        "--lora", "--max-steps", str(steps), "--lr", "1e-2", "--batch-size", "16", "--seed", "0",
        "--set", "peft.r=8", "--set", "train.eval_strategy=no", "--set", "train.logging_steps=3",
        *targets, *task_args, *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "llmtune: LoRA adapters: " in result.output
    return out, data, json.loads((out / "metrics.json").read_text())


def logged_losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def eval_metric(cli, model: Path, data: Path, out: Path, metric: str, *extra: str) -> float:
    # the training seed: mlm's fixed evaluation masks are drawn from it
    result = cli("eval", "--model", model, "--dataset", data, "-o", out, "--set", "train.seed=0", *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())["eval"][metric]


@pytest.mark.parametrize("task", [pytest.param(t, marks=() if t == "sentiment" else pytest.mark.slow) for t in TASKS])
def test_lora_every_task_learns_saves_and_loads(task, cli, request, tmp_path):
    from safetensors import safe_open

    out, data, metrics = train_lora(cli, request, task, tmp_path)
    losses = logged_losses(out)
    assert len(losses) >= 5 and sum(losses[-2:]) / 2 < losses[0] - 0.05, losses
    train = metrics["train"]
    assert 0 < train["trainable_params"] < 0.5 * train["total_params"]
    # merged model at the top (no adapter tensors), the adapters in adapter/
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert not any("lora" in name for name in fh.keys())  # noqa: SIM118
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    metric = TASKS[task][3]
    trained = metrics["eval"][metric]
    # `llmtune eval` on the merged folder and on the adapters (loaded on top of the base); clm eval of
    # a text file reads it as one stream by default, training line by line: score it as training did
    extra = ("--set", "options.sample_by=line") if task == "clm" else ()
    merged = eval_metric(cli, out, data, tmp_path / "ev-merged", metric, *extra)
    adapters = eval_metric(cli, adapter, data, tmp_path / "ev-adapter", metric, *extra)
    assert merged == pytest.approx(trained, rel=1e-4, abs=1e-6)
    assert adapters == pytest.approx(trained, rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_adapters_only_run_eval_and_export(cli, request, tmp_path):
    """peft.merge=false: adapters only; eval loads them on the base; export --merge gives a plain
    model with the same logits as the adapter model (fp32, 1e-4); bf16 / shards / bad outputs."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmtune.adapters import MODEL_CONFIG_FILE

    out, data, metrics = train_lora(cli, request, "sentiment", tmp_path, "--set", "peft.merge=false", steps=12)
    assert (out / "adapter_config.json").is_file() and (out / MODEL_CONFIG_FILE).is_file()
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["r"] == 8 and "classifier" in saved["modules_to_save"]
    again = eval_metric(cli, out, data, tmp_path / "ev", "eval_loss")
    assert again == pytest.approx(metrics["eval"]["eval_loss"], rel=1e-4)

    exported = tmp_path / "export"
    result = cli("export", "--model", out, "--output", exported, "--merge", "--max-shard-size", "100KB")
    assert result.exit_code == 0, result.output
    assert (exported / "model.safetensors.index.json").is_file() and len(list(exported.glob("*.safetensors"))) > 1
    assert (exported / "tokenizer.json").is_file() and (exported / "llmtune_config.yaml").is_file()
    assert "## Export" in (exported / "README.md").read_text()
    plain = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    from peft import PeftModel

    from llmtune.loading import merged_model

    base = AutoModelForSequenceClassification.from_pretrained(
        request.getfixturevalue("tiny_bert_dir"), config=plain.config.__class__.from_json_file(out / MODEL_CONFIG_FILE)
    )
    adapted = PeftModel.from_pretrained(base, str(out)).eval()
    tok = AutoTokenizer.from_pretrained(exported)
    batch = tok(["the movie was great", "a dull boring film really"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = adapted(**batch).logits
        got = plain(**batch).logits
        assert torch.allclose(got, want, atol=1e-4, rtol=0), (got, want)
        assert torch.allclose(
            merged_model(out, "AutoModelForSequenceClassification").eval()(**batch).logits, want, atol=1e-4
        )
    assert plain.config.id2label == {0: "negative", 1: "positive"}

    # bf16 export of the adapters themselves (no --merge)
    result = cli("export", "--model", out, "--output", tmp_path / "adapters-bf16", "--dtype", "bf16")
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "adapters-bf16" / "adapter_model.safetensors"))
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())

    # bad inputs: one line, exit 2, nothing lost
    assert "is not empty" in one_error_line(cli("export", "--model", out, "--output", exported))
    assert (exported / "model.safetensors.index.json").is_file()
    assert "--dtype must be" in one_error_line(
        cli("export", "--model", out, "--output", tmp_path / "x", "--dtype", "int3")
    )
    assert "--max-shard-size" in one_error_line(
        cli("export", "--model", out, "--output", tmp_path / "x", "--max-shard-size", "huge")
    )
    assert "inside the run folder" in one_error_line(cli("export", "--model", out, "--output", out / "sub"))
    assert "model folder not found" in one_error_line(
        cli("export", "--model", tmp_path / "nope", "--output", tmp_path / "y")
    )
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_error_line(cli("export", "--model", out, "--output", tmp_path / "file"))
