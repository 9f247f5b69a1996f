"""Preference tuning (dpo): pair layouts, bad pairs, tokenization, the losses against their
formulas, log-probs, training that learns a toy preference, eval, reference variants."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from llmtune.errors import LlmtuneError
from tests.conftest import EN_DE

COLS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
WHOLE = {"prompt": None, "chosen": "chosen", "rejected": "rejected"}


def make_preference_rows(n: int, seed: int = 0, form: str = "plain") -> list[dict]:
    """A toy preference: the German translation is chosen over the English sentence echoed back.

    ``form``: plain (prompt/chosen/rejected strings), hh (whole Human:/Assistant: conversations),
    messages (whole conversations as chat message lists, no prompt column).
    """
    rng = random.Random(seed)
    words = list(EN_DE)
    rows = []
    for _ in range(n):
        en = " ".join(rng.choice(words) for _ in range(rng.randint(2, 4)))
        de = " ".join(EN_DE[w] for w in en.split())
        prompt = f"translate {en}"
        if form == "plain":
            rows.append({"prompt": prompt, "chosen": de, "rejected": en})
        elif form == "hh":
            rows.append(
                {side: f"\n\nHuman: {prompt}\n\nAssistant: {text}" for side, text in (("chosen", de), ("rejected", en))}
            )
        else:
            user = {"role": "user", "content": prompt}
            rows.append(
                {
                    side: [user, {"role": "assistant", "content": text}]
                    for side, text in (("chosen", de), ("rejected", en))
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- rows -> prompt and answers -----------------------------------------------------------------


def test_split_pair_layouts():
    from llmtune.tasks.dpo.data import parse_hh, split_pair

    user = [{"role": "user", "content": "hi"}]
    assert split_pair("hi", "hello", "go away", COLS) == (user, "hello", "go away")
    # chat message lists: a prompt conversation and one assistant answer each (TRL's form)
    history = [{"role": "system", "content": "be kind"}, *user]
    got = split_pair(history, [{"role": "assistant", "content": "a"}], [{"from": "gpt", "value": "b"}], COLS)
    assert got == (history, "a", "b")
    # Anthropic HH: whole conversations split at the last assistant turn
    chosen = "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: help me\n\nAssistant: Sure, with what?"
    rejected = "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: help me\n\nAssistant: No."
    prompt, c, r = split_pair(None, chosen, rejected, WHOLE)
    assert [m["role"] for m in prompt] == ["user", "assistant", "user"] and prompt[-1]["content"] == "help me"
    assert (c, r) == ("Sure, with what?", "No.")
    assert parse_hh(chosen)[-1] == {"role": "assistant", "content": "Sure, with what?"}
    # whole conversations as message lists
    conv = [*user, {"role": "assistant", "content": "x"}]
    assert split_pair(None, conv, [*user, {"role": "assistant", "content": "y"}], WHOLE) == (user, "x", "y")
    # an HH prompt ending in "Assistant:" awaits the answer
    assert split_pair("\n\nHuman: hi\n\nAssistant:", "a", "b", COLS) == (user, "a", "b")


@pytest.mark.parametrize(
    ("prompt", "chosen", "rejected", "cols", "kind", "text"),
    [
        ("hi", "", "no", COLS, "empty", "'chosen' answer is empty"),
        (None, "\n\nHuman: hi\n\nAssistant: ", "\n\nHuman: hi\n\nAssistant: ok", WHOLE, "empty", "empty"),
        ("hi", "same", " same ", COLS, "identical", "same answer"),
        (None, "just text", "other text", WHOLE, "unseparable", "no prompt column"),
        (None, "\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: y", WHOLE, "unseparable", "differ before"),
        ("", "a", "b", COLS, "unseparable", "prompt ('prompt') is empty"),
        (
            None,
            [{"role": "assistant", "content": "x"}],
            [{"role": "assistant", "content": "y"}],
            WHOLE,
            "unseparable",
            "no prompt before",
        ),
        (
            None,
            [{"role": "user", "content": "q"}],
            [{"role": "user", "content": "q"}],
            WHOLE,
            "unseparable",
            "no assistant answer",
        ),
    ],
)
def test_bad_pairs_are_classified(prompt, chosen, rejected, cols, kind, text):
    from llmtune.tasks.dpo.data import BadPair, split_pair

    with pytest.raises(BadPair, match=re.escape(text)) as err:
        split_pair(prompt, chosen, rejected, cols)
    assert err.value.kind == kind


def test_encode_pair_tokens_and_truncation(chat_tok):
    from llmtune.tasks.dpo.data import encode_pair

    prompt = [{"role": "user", "content": "translate the big dog"}]
    enc = encode_pair(chat_tok, prompt, "der gross hund", "the big dog", max_length=256, max_prompt=128)
    rendered = chat_tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert enc["prompt_ids"] == chat_tok(rendered, add_special_tokens=False)["input_ids"]  # as at inference
    assert chat_tok.decode(enc["chosen_ids"]) == "der gross hund<|im_end|>\n"
    assert chat_tok.decode(enc["rejected_ids"]) == "the big dog<|im_end|>\n"
    assert enc["chosen_ids"].count(chat_tok.eos_token_id) == 1 and not enc["truncated"]
    # too long: the prompt loses its start to make room for the answers...
    n, a = len(enc["prompt_ids"]), max(len(enc["chosen_ids"]), len(enc["rejected_ids"]))
    cut = encode_pair(chat_tok, prompt, "der gross hund", "the big dog", max_length=n, max_prompt=2)
    assert cut["truncated"] and cut["prompt_ids"] == enc["prompt_ids"][a:] and cut["chosen_ids"] == enc["chosen_ids"]
    # ...but keeps at least max_prompt tokens; then the answers lose their end
    short = encode_pair(chat_tok, prompt, "der gross hund", "the big dog", max_length=n, max_prompt=n - 2)
    assert short["prompt_ids"] == enc["prompt_ids"][2:] and short["chosen_ids"] == enc["chosen_ids"][:2]
    assert len(short["prompt_ids"]) + len(short["rejected_ids"]) == n


@pytest.fixture(scope="module")
def chat_tok(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


# ---- losses and log-probs -----------------------------------------------------------------------


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_losses_equal_their_formulas_on_hand_computed_values():
    import torch

    from llmtune.tasks.dpo.loss import pair_metrics, preference_loss, rewards

    # two pairs: policy/reference log-probs of chosen (c) and rejected (r) answers, answer lengths
    pc, pr = torch.tensor([-10.0, -7.0]), torch.tensor([-12.0, -5.0])
    rc, rr = torch.tensor([-11.0, -6.0]), torch.tensor([-11.5, -6.5])
    nc, nr = torch.tensor([4.0, 2.0]), torch.tensor([5.0, 3.0])
    beta, gamma = 0.5, 0.3
    # DPO: -log sigmoid(beta * ((pc - rc) - (pr - rr)))
    #   pair 1: (1) - (-0.5) = 1.5 -> -log sig(0.75); pair 2: (-1) - (1.5) = -2.5 -> -log sig(-1.25)
    dpo = preference_loss("sigmoid", beta, gamma, pc, pr, rc, rr, nc, nr)
    assert dpo.tolist() == pytest.approx([-math.log(_sig(0.75)), -math.log(_sig(-1.25))], rel=1e-6)
    # IPO: (log-ratio_c / nc - log-ratio_r / nr - 1 / (2 beta))^2
    #   pair 1: 1/4 - (-0.5)/5 - 1 = -0.65; pair 2: -1/2 - 1.5/3 - 1 = -2
    ipo = preference_loss("ipo", beta, gamma, pc, pr, rc, rr, nc, nr)
    assert ipo.tolist() == pytest.approx([0.65**2, 4.0], rel=1e-6)
    # SimPO: -log sigmoid(beta * (pc / nc - pr / nr) - gamma)
    #   pair 1: 0.5 * (-2.5 + 2.4) - 0.3 = -0.35; pair 2: 0.5 * (-3.5 + 5/3) - 0.3
    simpo = preference_loss("simpo", beta, gamma, pc, pr, rc, rr, nc, nr)
    second = 0.5 * (-3.5 + 5 / 3) - 0.3
    assert simpo.tolist() == pytest.approx([-math.log(_sig(-0.35)), -math.log(_sig(second))], rel=1e-6)
    # rewards and the metrics built on them
    wc, wl = rewards("sigmoid", beta, pc, pr, rc, rr, nc, nr)
    assert wc.tolist() == pytest.approx([0.5, -0.5]) and wl.tolist() == pytest.approx([-0.25, 0.75])
    m = pair_metrics(torch.stack([pc, pr, rc, rr, nc, nr], dim=1), "sigmoid", beta, gamma)
    assert m["reward_accuracy"] == 0.5 and m["reward_margin"] == pytest.approx((0.75 - 1.25) / 2)
    assert m["logp_accuracy"] == 0.5 and m["chosen_logps"] == -8.5 and m["rejected_logps"] == -8.5
    assert m["pair_loss"] == pytest.approx(dpo.mean().item())
    assert rewards("simpo", beta, -10.0, -12.0, 0, 0, 4, 5) == pytest.approx((-1.25, -1.2))


def test_sequence_logps_sum_the_answer_tokens(tiny_llama_dir, chat_tok):
    import torch
    from transformers import AutoModelForCausalLM

    from llmtune.tasks.dpo.collator import PairCollator
    from llmtune.tasks.dpo.data import encode_pair
    from llmtune.tasks.dpo.loss import sequence_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    features = []
    for i, row in enumerate(make_preference_rows(3, seed=4)):
        enc = encode_pair(
            chat_tok, [{"role": "user", "content": row["prompt"]}], row["chosen"], row["rejected"], 256, 128
        )
        features.append({**enc, "row": i})
    batch = PairCollator(chat_tok.pad_token_id)(features)
    assert batch["input_ids"].shape[0] == 6 and batch["row"].tolist() == [0, 1, 2]
    with torch.no_grad():
        logps, counts = sequence_logps(model, batch)
        for k, f in enumerate(features):
            for side, j in (("chosen_ids", k), ("rejected_ids", k + 3)):
                ids = f["prompt_ids"] + f[side]
                logits = model(torch.tensor([ids])).logits[0].log_softmax(-1)
                start = len(f["prompt_ids"])
                expected = sum(logits[t - 1, ids[t]].item() for t in range(start, len(ids)))
                assert logps[j].item() == pytest.approx(expected, abs=1e-4)  # padding changes nothing
                assert counts[j].item() == len(f[side])


def test_config_validation():
    from llmtune.errors import ConfigError
    from llmtune.resolve import build_config

    with pytest.raises(ConfigError) as err:
        build_config(
            {
                "task": "dpo",
                "data": {"streaming": True, "max_length": 64},
                "train": {"max_steps": 2},
                "options": {"loss_type": "kto", "beta": 0, "max_prompt_length": 64, "simpo_gamma": 1.0},
            }
        )
    text = str(err.value)
    for part in ("options.loss_type must be one of sigmoid, ipo, simpo", "options.beta must be > 0",
                 "options.max_prompt_length must be in [1, data.max_length=64)", "data.streaming is not supported",
                 "options.simpo_gamma is only used by loss_type=simpo"):  # fmt: skip
        assert part in text
    with pytest.raises(ConfigError, match="uses no reference model"):
        build_config({"task": "dpo", "options": {"loss_type": "simpo", "precompute_reference": True}})


# ---- end to end ---------------------------------------------------------------------------------


def finetune(cli, model_dir, data, out, *sets: str, steps: int = 16, ok: bool = True):
    args = ["finetune", "--task", "dpo", "--model", model_dir, "--dataset", data, "--output-dir", out]
    args += ["--max-steps", str(steps), "--lr", "3e-3", "--batch-size", "8", "--grad-accum", "1", "--seed", "0"]
    for item in (
        "train.logging_steps=4",
        "train.eval_strategy=no",
        "train.warmup_ratio=0",
        "data.max_length=64",
        *sets,
    ):
        args += ["--set", item]
    result = cli(*args)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def evaluate(cli, model_dir, data, out, *sets: str) -> dict:
    args = ["eval", "--model", model_dir, "--dataset", data, "--output-dir", out, "--task", "dpo"]
    for item in sets:
        args += ["--set", item]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())["eval"] | {"_output": result.output}


@pytest.fixture(scope="module")
def hh_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dpo-data")
    write_jsonl(folder / "train.jsonl", make_preference_rows(96, seed=1, form="hh"))
    write_jsonl(folder / "validation.jsonl", make_preference_rows(15, seed=2, form="hh"))
    return folder


@pytest.mark.slow
def test_dpo_learns_a_toy_preference_and_eval_reports_it(tiny_llama_dir, hh_data, tmp_path, cli):
    val = hh_data / "validation.jsonl"
    # before: the base model's implicit preference (no reference: rewards are its log-probs)
    before = evaluate(cli, tiny_llama_dir, val, tmp_path / "before")
    assert "no reference model" in before["_output"]
    assert before["eval_reward_accuracy"] == before["eval_logp_accuracy"] < 1
    out = tmp_path / "run"
    finetune(cli, tiny_llama_dir, hh_data, out, "train.eval_strategy=epoch", "train.load_best_model_at_end=false")
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert metrics["eval_pairs"] == 15
    assert metrics["eval_reward_accuracy"] >= 0.9 and metrics["eval_reward_margin"] > 0
    assert metrics["eval_logp_accuracy"] >= before["eval_logp_accuracy"]
    assert metrics["eval_chosen_logps"] > before["eval_chosen_logps"]
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    trained = [r for r in log if "reward_accuracy" in r]
    assert trained and trained[-1]["reward_accuracy"] > trained[0]["reward_accuracy"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(15))
    assert sum(r["correct"] for r in rows) / 15 == pytest.approx(metrics["eval_reward_accuracy"])

    # llmtune eval of the saved model: the run's base model is its reference, same numbers
    again = evaluate(cli, out, val, tmp_path / "after")
    assert f"reference model {tiny_llama_dir}" in again["_output"]
    for key in ("eval_loss", "eval_reward_accuracy", "eval_reward_margin", "eval_chosen_logps", "eval_logp_accuracy"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-5), key
    # precomputed reference log-probs in the data (from the base model's eval): no reference model
    base_rows = [json.loads(line) for line in (tmp_path / "before" / "predictions.jsonl").read_text().splitlines()]
    raw = [json.loads(line) for line in val.read_text().splitlines()]
    for r, b in zip(raw, base_rows, strict=True):
        r["ref_chosen_logps"], r["ref_rejected_logps"] = b["chosen_logps"], b["rejected_logps"]
    scored = evaluate(cli, out, write_jsonl(tmp_path / "scored.jsonl", raw), tmp_path / "scored")
    assert "reference model" not in scored["_output"]
    for key in ("eval_loss", "eval_reward_accuracy", "eval_reward_margin"):
        assert scored[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_reference_variants_and_losses(tiny_llama_dir, hh_data, tmp_path, cli):
    """A precomputed reference trains exactly like the frozen copy; IPO and SimPO train."""
    from tests.run_utils import losses

    copy, pre = tmp_path / "copy", tmp_path / "pre"
    finetune(cli, tiny_llama_dir, hh_data, copy, "train.logging_steps=1", steps=4)
    finetune(cli, tiny_llama_dir, hh_data, pre, "train.logging_steps=1", "options.precompute_reference=true", steps=4)
    assert losses(copy)[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    assert losses(pre) == pytest.approx(losses(copy), abs=1e-5)
    for loss_type, beta in (("ipo", "0.5"), ("simpo", "2.0")):
        out = tmp_path / loss_type
        finetune(cli, tiny_llama_dir, hh_data, out, f"options.loss_type={loss_type}", f"options.beta={beta}", steps=8)
        got = losses(out)
        assert all(math.isfinite(x) for x in got) and got[-1] < got[0], (loss_type, got)


# ---- bad input through the CLI ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"prompt": "translate the dog", "chosen": "", "rejected": "the dog"}, "row 3: 'chosen' answer is empty"),
        ({"prompt": "", "chosen": "der hund", "rejected": "the dog"}, "row 3: the prompt ('prompt') is empty"),
    ],
)
def test_bad_pair_is_one_error_line_or_skipped_with_a_count(tiny_llama_dir, tmp_path, cli, bad, message):
    rows = make_preference_rows(6, seed=3)
    rows.insert(2, bad)
    rows.insert(4, {"prompt": "translate a cat", "chosen": "ein katze", "rejected": "ein katze"})  # identical
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    sets = ("data.validation_split=0",)
    result = finetune(cli, tiny_llama_dir, data, tmp_path / "o", *sets, steps=1, ok=False)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "options.skip_invalid_pairs=true" in errors[0], result.output
    assert str(data) in errors[0] and "Traceback" not in result.output
    assert not list((tmp_path / "o").glob("*"))  # nothing written
    ok = finetune(cli, tiny_llama_dir, data, tmp_path / "o2", *sets, "options.skip_invalid_pairs=true", steps=1)
    (note,) = [line for line in ok.output.splitlines() if line.startswith("dpo: split 'train': skipped")]
    assert "1 pair whose chosen and rejected answers are identical" in note
    assert "1 pair with an empty answer" in note or "1 pair whose prompt cannot be separated" in note


def test_unseparable_layout_and_bad_reference_columns(tiny_llama_dir, tmp_path, cli):
    data = write_jsonl(tmp_path / "plain.jsonl", [{"chosen": "good answer", "rejected": "bad answer"}] * 4)
    result = finetune(cli, tiny_llama_dir, data, tmp_path / "o", "data.validation_split=0", steps=1, ok=False)
    assert result.exit_code == 2
    (error,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "row 1: there is no prompt column" in error
    rows = [dict(r, ref_chosen_logps=-1.0) for r in make_preference_rows(4)]
    data = write_jsonl(tmp_path / "half.jsonl", rows)
    result = finetune(cli, tiny_llama_dir, data, tmp_path / "o", "data.validation_split=0", steps=1, ok=False)
    assert result.exit_code == 2 and "only one of the columns ref_chosen_logps and ref_rejected_logps" in result.output


def test_prepare_rejects_all_identical(tiny_llama_dir, tmp_path):
    from llmtune.resolve import build_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext

    data = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}] * 3)
    cfg = build_config(
        {
            "task": "dpo",
            "model": {"name_or_path": str(tiny_llama_dir)},
            "data": {"dataset": str(data), "validation_split": 0},
        }
    )
    task = get_task("dpo")
    ctx = RunContext(cfg=cfg, model_path=str(tiny_llama_dir))
    ctx.tokenizer = task.load_tokenizer(ctx)
    with pytest.raises(LlmtuneError, match="no usable preference pair left"):
        task.prepare(ctx, task.load_data(ctx))


def test_smoke_recipe_builds_from_config(tmp_path, cli):
    """The shipped offline recipe: random-init Llama from builtin:tiny_chat_llama, builtin:dpo_demo."""
    out = tmp_path / "smoke"
    result = cli("finetune", "--recipe", "dpo-smoke", "--max-steps", "2", "-o", out, "--set", "train.eval_strategy=no")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert metrics["eval_pairs"] == 56 and 0 <= metrics["eval_reward_accuracy"] <= 1
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()


@pytest.mark.slow
def test_dpo_with_lora_uses_the_base_with_adapters_disabled_as_reference(tiny_llama_dir, hh_data, tmp_path, cli):
    from llmtune.resolve import build_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext
    from tests.run_utils import losses

    # no second copy: the reference is the adapted model with its adapters switched off
    cfg = build_config({"task": "dpo", "model": {"name_or_path": str(tiny_llama_dir)}, "peft": {"method": "lora"}})
    task = get_task("dpo")
    ctx = RunContext(cfg=cfg, model_path=str(tiny_llama_dir))
    ctx.tokenizer = task.load_tokenizer(ctx)
    task.build_model(ctx)
    assert ctx.state["reference"] == "adapters"

    out = tmp_path / "lora"
    sets = ("peft.method=lora", "peft.r=8", "peft.target_modules=[all-linear]", "train.logging_steps=1")
    result = finetune(cli, tiny_llama_dir, hh_data, out, *sets, "train.eval_strategy=epoch", steps=8)
    assert "LoRA adapters:" in result.output
    got = losses(out)
    assert got[0] == pytest.approx(math.log(2), abs=1e-6)  # zero-initialised adapters: policy == reference
    assert got[-1] < got[0]
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert (out / "adapter").is_dir() and (out / "model.safetensors").is_file()  # merged, adapters kept
    again = evaluate(cli, out, hh_data / "validation.jsonl", tmp_path / "ev")  # base model as reference
    for key in ("eval_loss", "eval_reward_accuracy", "eval_reward_margin"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-5), key


def test_pairs_fit_the_model_positions_when_max_length_is_cut(tiny_llama_dir, tmp_path):
    """data.max_length and max_prompt_length above the model's 256 positions: every pair is cut to
    256 tokens with a non-empty answer (max_prompt_length never takes the whole sequence)."""
    from llmtune.resolve import build_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext

    prompt = " ".join(f"p{i}" for i in range(300))
    rows = [{"prompt": f"{prompt} {i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(3)]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    cfg = build_config(
        {
            "task": "dpo",
            "model": {"name_or_path": str(tiny_llama_dir)},
            "data": {"dataset": str(data), "validation_split": 0, "max_length": 1024},
            "options": {"max_prompt_length": 600},
        }
    )
    task = get_task("dpo")
    ctx = RunContext(cfg=cfg, model_path=str(tiny_llama_dir))
    ctx.tokenizer = task.load_tokenizer(ctx)
    out = task.prepare(ctx, task.load_data(ctx))["train"]
    assert len(out) == 3
    for row in out:
        for answer in ("chosen_ids", "rejected_ids"):
            assert len(row[answer]) >= 1 and len(row["prompt_ids"]) + len(row[answer]) <= 256
    assert any("above the model's positions (256)" in w for w in ctx.warnings)
