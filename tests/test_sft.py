"""Instruction tuning: answer-only loss masks, EOS, chat templates, packing, LoRA, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llmtune.errors import LlmtuneError
from tests.conftest import make_sft_rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chat_tok(tiny_chat_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_tokenizer_dir)


def sft_context(tree: dict, model_path: str | None = None, training: bool = True):
    from llmtune.resolve import build_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext

    cfg = build_config({"task": "sft", **tree})
    return get_task("sft"), RunContext(cfg=cfg, training=training, model_path=model_path)


# ---- masking and EOS ----------------------------------------------------------------------------


def test_loss_masks_exactly_the_prompt_tokens(chat_tok):
    from llmtune.tasks.sft.data import encode_conversation

    messages = [
        {"role": "user", "content": "translate the big dog"},
        {"role": "assistant", "content": "der gross hund"},
    ]
    ids, labels = encode_conversation(chat_tok, messages, max_length=256)
    prompt = chat_tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    prompt_ids = chat_tok(prompt, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert ids[:n] == prompt_ids  # the prompt is tokenized exactly as at inference
    assert labels[:n] == [-100] * n
    assert labels[n:] == ids[n:] and all(x != -100 for x in labels[n:])
    # the trained part is the answer and its end-of-turn (which is this tokenizer's EOS)
    assert chat_tok.decode(ids[n:]) == "der gross hund<|im_end|>\n"
    assert ids[n:].count(chat_tok.eos_token_id) == 1
    whole = chat_tok.apply_chat_template(messages, tokenize=False)
    assert chat_tok.decode(ids) == whole


def test_multi_turn_trains_every_assistant_turn_only(chat_tok):
    from llmtune.tasks.sft.data import encode_conversation

    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "translate a cat"},
        {"role": "assistant", "content": "ein katze"},
        {"role": "user", "content": "and a dog"},
        {"role": "assistant", "content": "ein hund"},
        {"role": "user", "content": "trailing turn without answer"},
    ]
    ids, labels = encode_conversation(chat_tok, messages, max_length=256)
    trained = [i for i, x in zip(ids, labels, strict=True) if x != -100]
    assert chat_tok.decode(trained) == "ein katze<|im_end|>\nein hund<|im_end|>\n"
    assert "trailing" not in chat_tok.decode(ids)  # turns after the last answer are dropped
    _, short = encode_conversation(chat_tok, messages, max_length=10)
    assert len(short) == 10


def test_eos_appended_when_the_template_has_no_end_marker(chat_tok):
    from llmtune.tasks.common.chat import CHAT_TEMPLATES
    from llmtune.tasks.sft.data import encode_conversation

    tok = chat_tok.__class__.from_pretrained(chat_tok.name_or_path)
    tok.chat_template = CHAT_TEMPLATES["plain"]
    messages = [{"role": "user", "content": "translate a car"}, {"role": "assistant", "content": "ein auto"}]
    ids, labels = encode_conversation(tok, messages, max_length=256)
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    trained = [i for i, x in zip(ids, labels, strict=True) if x != -100]
    assert tok.decode(trained[:-1]) == "ein auto"
    assert tok.decode([i for i, x in zip(ids, labels, strict=True) if x == -100]) == "translate a car\n"


def test_fallback_chat_template_and_column_detection(chat_tok, tmp_path):
    from llmtune.tasks.common.chat import CHAT_TEMPLATES

    plain_dir = tmp_path / "no-template"
    tok = chat_tok.__class__.from_pretrained(chat_tok.name_or_path)
    tok.chat_template = None
    tok.save_pretrained(plain_dir)
    (plain_dir / "chat_template.jinja").unlink(missing_ok=True)
    data = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [{"instruction": "translate", "input": f"the dog {i}", "output": f"der hund {i}"} for i in range(6)],
    )
    task, ctx = sft_context({"data": {"dataset": str(data)}}, model_path=str(plain_dir))
    ctx.tokenizer = task.load_tokenizer(ctx)
    assert ctx.tokenizer.chat_template == CHAT_TEMPLATES["chatml"]
    raw = task.load_data(ctx)
    out = task.prepare(ctx, raw)
    assert ctx.columns == {"prompt": "instruction", "input": "input", "response": "output"}
    row = raw["train"][0]
    assert task.conversation(ctx, row)[0]["content"] == f"translate\n\n{row['input']}"
    assert len(out["train"]) == len(raw["train"])


def test_sharegpt_messages_and_errors(chat_tok, tmp_path):
    from llmtune.tasks.common.chat import normalize_messages

    got = normalize_messages([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}], "conversations")
    assert got == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(LlmtuneError, match="non-empty list"):
        normalize_messages("hi", "messages")
    data = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}] * 4)
    task, ctx = sft_context({"data": {"dataset": str(data)}, "options": {"system_prompt": "sys"}})
    ctx.tokenizer = chat_tok
    with pytest.raises(LlmtuneError, match="no assistant message"):
        task.prepare(ctx, task.load_data(ctx))


def test_config_validation():
    from llmtune.errors import ConfigError
    from llmtune.resolve import build_config

    with pytest.raises(ConfigError) as err:
        build_config(
            {
                "task": "sft",
                "options": {"chat_template": "vicuna", "num_samples": -1},
                "peft": {"method": "lora", "r": 0},
            }
        )
    text = str(err.value)
    assert "options.chat_template 'vicuna'" in text and "peft.r must be >= 1" in text
    assert "options.num_samples must be >= 0" in text
    # sft's old LoRA keys point at the shared peft section
    with pytest.raises(ConfigError) as err:
        build_config({"task": "sft", "options": {"lora": True, "lora_r": 4, "merge_lora": False}})
    text = str(err.value)
    assert "options.lora moved to the peft section: use peft.method" in text
    assert "options.lora_r moved to the peft section: use peft.r" in text and "use peft.merge" in text


# ---- packing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_gives_the_same_per_example_loss(tiny_llama_dir, chat_tok, attn):
    """Flattened examples with restarting position_ids must not attend to each other."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmtune.packing import PaddingFreeCollator
    from llmtune.tasks.sft.data import encode_conversation

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=attn).eval()
    examples = []
    for row in make_sft_rows(3, seed=3):
        msgs = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        ids, labels = encode_conversation(chat_tok, msgs, 256)
        examples.append({"input_ids": ids, "labels": labels})
    assert len({len(e["input_ids"]) for e in examples}) > 1  # different lengths

    def nll_sum(logits, labels):
        logits, labels = logits[:-1], labels[1:]
        return torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")

    with torch.no_grad():
        alone = [nll_sum(model(torch.tensor([e["input_ids"]])).logits[0], torch.tensor(e["labels"])) for e in examples]
        batch = PaddingFreeCollator(pad_id=0, row_length=256, layout="flat")(examples)
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        packed_logits = model(**batch).logits[0]
        # the same row without restarting positions: plain causal attention across examples
        leaky_logits = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        # with a KV cache (the config default) transformers ignores the packing: why the collator
        # passes use_cache=False
        cached_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    start = 0
    for e, reference in zip(examples, alone, strict=True):
        end = start + len(e["input_ids"])
        labels = torch.tensor(e["labels"])
        assert torch.allclose(nll_sum(packed_logits[start:end], labels), reference, atol=1e-4, rtol=1e-5)
        if start > 0:  # the check can fail: attending across examples changes later examples' loss
            assert not torch.allclose(nll_sum(leaky_logits[start:end], labels), reference, atol=1e-3)
            assert not torch.allclose(nll_sum(cached_logits[start:end], labels), reference, atol=1e-3)
        start = end
    # the model's own loss over the packed row equals the token-weighted mean of the separate ones
    tokens = sum(sum(x != -100 for x in e["labels"][1:]) for e in examples)
    with torch.no_grad():
        loss = model(**batch).loss
    assert math.isclose(loss.item(), (sum(alone) / tokens).item(), rel_tol=1e-4)


# ---- end to end through the CLI -----------------------------------------------------------------


def finetune(cli, model_dir, data, out, *sets: str, steps: int = 12):
    args = ["finetune", "--task", "sft", "--model", model_dir, "--dataset", data, "--output-dir", out]
    args += ["--max-steps", str(steps), "--lr", "5e-3", "--batch-size", "8", "--seed", "0"]
    for item in (
        "train.eval_strategy=no",
        "train.logging_steps=6",
        "options.num_samples=4",
        "options.max_new_tokens=8",
        *sets,
    ):
        args += ["--set", item]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sft-data")
    write_jsonl(folder / "train.jsonl", make_sft_rows(96, seed=1))
    write_jsonl(folder / "validation.jsonl", make_sft_rows(10, seed=2))
    return folder


@pytest.mark.slow
def test_sft_end_to_end_and_eval(tiny_llama_dir, sft_data, tmp_path, cli):
    out = tmp_path / "out"
    metrics = finetune(cli, tiny_llama_dir, sft_data, out)["eval"]
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-9)
    assert metrics["eval_perplexity"] < 400  # vocab ~400: below a uniform guess after training
    val = [json.loads(line) for line in (sft_data / "validation.jsonl").read_text().splitlines()]
    answer_tokens = 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    for row in val:  # answer tokens + "<|im_end|>" + "\n", minus nothing: every answer is scored
        answer_tokens += len(tok(row["response"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"])
    assert metrics["eval_tokens"] == answer_tokens
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(set(r) == {"input", "reference", "prediction"} for r in rows)
    assert rows[0]["input"] == val[0]["prompt"] and rows[0]["reference"] == val[0]["response"]
    assert tok.chat_template  # the template used is saved with the model

    result = cli("eval", "--model", out, "--dataset", sft_data / "validation.jsonl", "--output-dir", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["eval"]
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    assert again["eval_tokens"] == metrics["eval_tokens"]


@pytest.mark.slow
def test_sft_packing_with_merged_lora(tiny_llama_dir, sft_data, tmp_path, cli):
    out = tmp_path / "lora"
    sets = (
        "options.packing=true",
        "peft.method=lora",
        "peft.r=4",
        "peft.target_modules=[q_proj, v_proj]",
    )
    metrics = finetune(cli, tiny_llama_dir, sft_data, out, *sets)["eval"]
    assert math.isfinite(metrics["eval_loss"])
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()  # merged full model
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "adapter_config.json").exists()
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        names = fh.keys()
        assert names and not any("lora" in name for name in names)
    result = cli("eval", "--model", out, "--dataset", sft_data / "validation.jsonl", "--output-dir", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["eval"]
    # the merged model (no adapters) scores the data exactly as the adapted one did after training
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-4)


@pytest.mark.slow
def test_sft_lora_adapters_only_eval(tiny_llama_dir, sft_data, tmp_path, cli):
    out = tmp_path / "adapters"
    metrics = finetune(cli, tiny_llama_dir, sft_data, out, "peft.method=lora", "peft.merge=false", steps=6)
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    result = cli("eval", "--model", out, "--dataset", sft_data / "validation.jsonl", "--output-dir", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["eval"]
    assert again["eval_loss"] == pytest.approx(metrics["eval"]["eval_loss"], rel=1e-4)


def test_max_length_is_honoured_above_the_tokenizer_limit_up_to_the_model_positions(tiny_llama_dir, tmp_path):
    """data.max_length past the tokenizer's model_max_length is kept (as tokenizer(max_length=N) keeps
    it); past the model's positions it is cut, with one warning; the tokenizer's limit applies only
    when the model's positions are unknown."""
    from types import SimpleNamespace

    from llmtune.tasks.base import sequence_limit

    tok = SimpleNamespace(model_max_length=512)
    scratch = {"config": "llama-tiny", "name_or_path": None, "tokenizer": "builtin:tiny_chat_llama"}
    _, ctx = sft_context({"model": scratch, "data": {"max_length": 1000}})
    ctx.tokenizer = tok
    assert sequence_limit(ctx) == 1000 and ctx.warnings == []  # llama-tiny takes 1024 positions

    _, ctx = sft_context({"model": scratch, "data": {"max_length": 4096}})
    ctx.tokenizer = tok
    assert sequence_limit(ctx) == 1024 and sequence_limit(ctx) == 1024
    assert ctx.warnings == [
        "data.max_length=4096 is above the model's positions (1024): sequences are cut at 1024 tokens"
    ]

    # a checkpoint (256 positions), its config_overrides when training, and adapters trained on it
    _, ctx = sft_context({"model": {"name_or_path": str(tiny_llama_dir)}, "data": {"max_length": 300}})
    ctx.tokenizer = tok
    assert sequence_limit(ctx) == 256
    overrides = {"name_or_path": str(tiny_llama_dir), "config_overrides": {"max_position_embeddings": 512}}
    _, ctx = sft_context({"model": overrides, "data": {"max_length": 300}})
    ctx.tokenizer = tok
    assert sequence_limit(ctx) == 300
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_llama_dir)}))
    _, ctx = sft_context({"model": {"name_or_path": str(adapters)}, "data": {"max_length": 300}})
    ctx.tokenizer = tok
    assert sequence_limit(ctx) == 256

    _, ctx = sft_context({"model": {"name_or_path": "/nonexistent/model"}, "data": {"max_length": 1000}})
    ctx.tokenizer = tok
    assert sequence_limit(ctx) == 512  # no readable config: the tokenizer's limit
    assert "tokenizer's model_max_length (512)" in ctx.warnings[0]


def test_max_positions_reads_a_composite_config_s_text_config():
    from transformers import Gemma3Config

    from llmtune.modeling import max_positions

    config = Gemma3Config()
    assert getattr(config, "max_position_embeddings", None) is None  # only the text config has them
    assert max_positions(config) == config.get_text_config().max_position_embeddings


def test_sft_keeps_conversations_longer_than_the_tokenizer_limit(tmp_path):
    """The built-in chat tokenizer says 512, llama-tiny takes 1024: data.max_length=1024 keeps a
    conversation of over 512 tokens whole (it used to be cut at 512, silently)."""
    long_answer = " ".join(f"word{i}" for i in range(200))
    rows = [{"prompt": f"repeat {i}", "response": long_answer} for i in range(4)]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    scratch = {"config": "llama-tiny", "name_or_path": None, "tokenizer": "builtin:tiny_chat_llama"}
    task, ctx = sft_context({"model": scratch, "data": {"dataset": str(data), "max_length": 1024}})
    ctx.tokenizer = task.load_tokenizer(ctx)
    assert ctx.tokenizer.model_max_length == 512
    from llmtune.tasks.sft.data import encode_conversation

    messages = [{"role": "user", "content": "repeat 0"}, {"role": "assistant", "content": long_answer}]
    full = len(encode_conversation(ctx.tokenizer, messages, 10**6)[0])
    assert 512 < full <= 1024
    out = task.prepare(ctx, task.load_data(ctx))
    assert max(out["train"]["length"]) == full  # whole, not cut at the tokenizer's 512
    assert ctx.warnings == []
