"""Online RL (grpo): the built-in rewards, the reward contract and its errors, advantages and the
policy loss against their formulas, seeded sampling, and end-to-end runs on a tiny random Llama
(rewards logged per function, eval with greedy completions, Python and reward-model rewards,
LoRA, GGUF, bad input as one error line)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from llmtune.errors import LlmtuneError
from tests.test_dpo import make_preference_rows, write_jsonl


def options(**kw):
    from llmtune.tasks.grpo.options import GRPOOptions

    return GRPOOptions(**kw)


def make_sum_rows(n: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"What is {a} plus {b}?", "answer": f"{a} + {b} = #### {a + b}"})
    return rows


@pytest.fixture(scope="module")
def sums(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grpo-data")
    write_jsonl(root / "train.jsonl", make_sum_rows(16, 1))
    write_jsonl(root / "validation.jsonl", make_sum_rows(5, 2))
    return root


# ---- rewards ------------------------------------------------------------------------------------


def test_math_answer_extracts_and_normalises():
    from llmtune.tasks.grpo.rewards import extract_answer, math_answer, normalize_answer

    assert extract_answer("so 3 + 4 = 7 and then #### 1,200.") == "1,200."
    assert extract_answer("the answer is \\boxed{\\frac{1}{2}} ok 5") == "\\frac{1}{2}"
    assert extract_answer("first 3 then 42 apples") == "42"
    assert extract_answer("no digits") is None
    assert normalize_answer("$1,200.") == 1200.0 and normalize_answer("18dollars") == 18.0
    golds = ["Natalia sold 48+24 = 72 clips.\n#### 72", "7", "\\boxed{x+1}", "12"]
    completions = ["72 clips in all, #### 72", "It is 7.0", "so \\boxed{X+1}", "maybe 13"]
    assert math_answer([None] * 4, completions, answer=golds) == [1.0, 1.0, 1.0, 0.0]


def test_regex_format_and_length():
    from llmtune.tasks.grpo.rewards import builtin

    o = options(format_pattern=r"####\s*\d+", length_range=[2, 4])
    fmt, length = builtin("regex_format", o), builtin("length", o)
    assert fmt([None, None], ["x #### 12", "12"]) == [1.0, 0.0]
    ids = [[1], [1, 2], [1, 2, 3, 4], [1] * 6, [1] * 40]
    assert length([None] * 5, ["x"] * 5, completion_ids=ids) == [-0.5, 0.0, 0.0, -0.5, -1.0]


def test_reward_contract_errors_are_one_line(tmp_path):
    from llmtune.tasks.grpo.rewards import RewardSet, spec_problems

    code = tmp_path / "my_rewards.py"
    code.write_text(
        "def good(prompts, completions, **kw):\n    return [len(c) / 10 for c in completions]\n"
        "def boom(prompts, completions, **kw):\n    raise ValueError('no luck')\n"
        "def short(prompts, completions, **kw):\n    return [1.0]\n"
        "def words(prompts, completions, **kw):\n    return ['a' for c in completions]\n"
        "def needs(prompts, completions, **kw):\n    return [kw['missing'][0]] * len(completions)\n"
    )
    columns = {"completion_ids": [[1], [2]]}
    both = RewardSet(options(rewards=[f"{code}:good", "length"], reward_weights=[2.0, 1.0]))
    assert both.names == ["good", "length"] and both.weights == [2.0, 1.0]
    assert both(["p", "p"], ["abc", "abcdefghij"], columns) == [[0.3, 0.0], [1.0, 0.0]]
    for name, message in (
        ("boom", "reward function '.*:boom' raised ValueError: no luck"),
        ("short", "returned 1 values for 2 completions"),
        ("words", "must return a list of numbers"),
        ("needs", "needs the data column 'missing'"),
    ):
        with pytest.raises(LlmtuneError, match=message):
            RewardSet(options(rewards=[f"{code}:{name}"]))(["p", "p"], ["a", "b"], dict(columns))
    with pytest.raises(LlmtuneError, match="has no function 'nope'"):
        RewardSet(options(rewards=[f"{code}:nope"]))
    with pytest.raises(LlmtuneError, match="not found"):
        RewardSet(options(rewards=[f"{tmp_path}/absent.py:fn"]))
    assert any("unknown reward function 'math'" in p for p in spec_problems(["math"], None))
    assert any("2 values for 1 rewards" in p for p in spec_problems(["length"], [1.0, 2.0]))
    # a folder that is not a reward model
    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "config.json").write_text(json.dumps({"num_labels": 2}))
    with pytest.raises(LlmtuneError, match=r"is not a reward model .*found 2 outputs"):
        RewardSet(options(rewards=[str(tmp_path / "clf")]))
    with pytest.raises(LlmtuneError, match="is not a reward model"):
        RewardSet(options(rewards=[str(tmp_path)]))


# ---- maths --------------------------------------------------------------------------------------


def test_advantages_are_group_normalised():
    import torch

    from llmtune.tasks.grpo.loss import advantages

    total = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    adv, zero = advantages(total, 4, scale=True)
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std().item()
    assert adv[:4].tolist() == pytest.approx([0.75 / (std + 1e-4), -0.25 / (std + 1e-4)] + [-0.25 / (std + 1e-4)] * 2)
    assert adv[4:].tolist() == [0.0] * 4 and zero.tolist() == [False, True]
    raw, _ = advantages(total, 4, scale=False)
    assert raw[:4].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


def test_policy_loss_is_the_policy_gradient_plus_kl():
    import torch

    from llmtune.tasks.grpo.loss import policy_loss

    logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([1.0, -2.0])
    loss, kl = policy_loss("grpo", logps, None, adv, mask, 0.0, 0.2, 8)
    assert loss.item() == pytest.approx((-1.0 + 2.0) / 2)  # ratio 1: -A per token, token means, mean
    loss.backward()
    expected = torch.tensor([[-1 / 3] * 3, [1.0, 1.0, 0.0]]) / 2  # d/dlogp of -A * ratio
    assert torch.allclose(logps.grad, expected) and kl.tolist() == [0.0, 0.0]
    ref = logps.detach() - 0.1  # KL k3: exp(d) - d - 1 with d = -0.1
    _, kl = policy_loss("grpo", logps, ref, adv, mask, 0.5, 0.2, 8)
    assert kl.tolist() == pytest.approx([math.exp(-0.1) + 0.1 - 1] * 2, rel=1e-4)
    bnpo, _ = policy_loss("bnpo", logps, None, adv, mask, 0.0, 0.2, 8)
    assert bnpo.item() == pytest.approx((-3 + 4) / 5)
    dr, _ = policy_loss("dr_grpo", logps, None, adv, mask, 0.0, 0.2, 8)
    assert dr.item() == pytest.approx((-3 + 4) / (2 * 8))


def test_sample_seed_depends_on_seed_step_and_row():
    from llmtune.tasks.grpo.trainer import sample_seed

    seeds = {sample_seed(s, t, r, k) for s in (0, 1) for t in (0, 1) for r in (0, 1) for k in (0, 1)}
    assert len(seeds) == 16 and sample_seed(0, 3, 5, 1) == sample_seed(0, 3, 5, 1)


def test_seeded_sampler_draws_each_row_from_its_own_generator():
    import torch

    from llmtune.tasks.grpo.trainer import SeededSampler

    logits = torch.randn(3, 50)
    a = SeededSampler([1, 2, 3], 1.0, 1.0, "cpu")(None, logits)
    b = SeededSampler([9, 2, 3], 1.0, 1.0, "cpu")(None, logits)  # row 0's seed changes only row 0's draw stream
    assert torch.equal(a[1:], b[1:]) and (a == 0).sum(-1).tolist() == [1, 1, 1]
    # top_p keeps only the most likely token when it holds nearly all the mass
    peaked = torch.full((2, 50), -30.0)
    peaked[:, 7] = 10.0
    picks = SeededSampler([4, 5], 1.0, 0.5, "cpu")(None, peaked).argmax(-1)
    assert picks.tolist() == [7, 7]
    # the draws follow the softmax: a 2-token distribution 0.8/0.2 over many seeds
    two = torch.full((1, 50), -1e9)
    two[0, 0], two[0, 1] = math.log(0.8), math.log(0.2)
    draws = [SeededSampler([s], 1.0, 1.0, "cpu")(None, two).argmax(-1).item() for s in range(400)]
    assert 0.72 < draws.count(0) / 400 < 0.88


def test_config_validation():
    from llmtune.errors import ConfigError
    from llmtune.resolve import build_config

    with pytest.raises(ConfigError) as err:
        build_config(
            {
                "task": "grpo",
                "model": {"name_or_path": "x"},
                "options": {"num_generations": 1, "loss_type": "ppo", "rewards": ["math", "length"], "beta": -1},
            }
        )
    text = str(err.value)
    for part in (
        "num_generations must be >= 2",
        "loss_type must be one of grpo, bnpo, dr_grpo",
        "unknown reward function 'math'",
        "beta must be >= 0",
    ):
        assert part in text, part


# ---- end to end ---------------------------------------------------------------------------------


def grpo(cli, model, data, out, *sets, steps=4, extra=()):
    args = ["finetune", "--task", "grpo", "--model", model, "--dataset", data, "-o", out, "--seed", "0"]
    args += ["--max-steps", str(steps), "--batch-size", "4", "--lr", "1e-3"]
    for s in (
        "data.max_length=64",
        "options.max_completion_length=12",
        "options.num_generations=4",
        "train.logging_steps=1",
        *sets,
    ):
        args += ["--set", s]
    return cli(*args, *extra)


def log_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward" in r and "loss" in r]


@pytest.mark.slow
def test_grpo_run_logs_each_reward_and_eval_scores_greedy_completions(tiny_llama_dir, sums, tmp_path, cli):
    code = tmp_path / "rewards.py"
    code.write_text("def short(prompts, completions, answer, **kw):\n    return [-len(c) / 50 for c in completions]\n")
    out = tmp_path / "run"
    rewards = f"options.rewards=[math_answer,regex_format,{code}:short]"
    result = grpo(
        cli, tiny_llama_dir, sums, out, rewards, "options.reward_weights=[1.0,0.5,2.0]", "train.eval_strategy=epoch"
    )
    assert result.exit_code == 0, result.output
    logs = log_rows(out)
    assert len(logs) == 4
    for row in logs:
        for key in (
            "reward_math_answer",
            "reward_regex_format",
            "reward_short",
            "reward_short_std",
            "kl",
            "completion_length",
            "frac_reward_zero_std",
            "seconds_generation",
        ):
            assert key in row, key
        total = row["reward_math_answer"] + 0.5 * row["reward_regex_format"] + 2.0 * row["reward_short"]
        assert row["reward"] == pytest.approx(total, abs=2e-4)
        assert 1 <= row["completion_length"] <= 12 and row["reward_short"] <= 0
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-7) and logs[-1]["kl"] > 0  # the policy moved away
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert metrics["eval_prompts"] == 5 and 0 <= metrics["eval_accuracy"] <= 1
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["row"] for p in preds] == list(range(5))
    for p in preds:
        assert set(p["rewards"]) == {"math_answer", "regex_format", "short"}
        assert p["rewards"]["short"] == pytest.approx(-len(p["completion"]) / 50)
        assert p["prompt"].startswith("What is")
    # llmtune eval of the saved model: the same greedy completions and rewards
    again = cli(
        "eval",
        "--task",
        "grpo",
        "--model",
        out,
        "--dataset",
        sums / "validation.jsonl",
        "-o",
        tmp_path / "ev",
        "--set",
        rewards,
        "--set",
        "options.reward_weights=[1.0,0.5,2.0]",
        "--set",
        "options.max_completion_length=12",
        "--set",
        "data.max_length=64",
    )
    assert again.exit_code == 0, again.output
    scored = json.loads((tmp_path / "ev" / "metrics.json").read_text())["eval"]
    assert scored["eval_reward"] == pytest.approx(metrics["eval_reward"], abs=1e-6)


@pytest.mark.slow
def test_grpo_raises_a_reward_a_random_model_can_learn(tiny_llama_dir, sums, tmp_path, cli):
    """A reward a random model can learn in a few steps: the share of the letter 'e' in the text."""
    code = tmp_path / "letters.py"
    code.write_text(
        "def e_share(prompts, completions, **kw):\n    return [c.count('e') / max(len(c), 1) for c in completions]\n"
    )
    out = tmp_path / "e"
    result = grpo(
        cli, tiny_llama_dir, sums, out, f"options.rewards=[{code}:e_share]", "options.beta=0",
        "options.num_generations=8", "data.validation_split=0", steps=12, extra=("--lr", "1e-2"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    logs = log_rows(out)
    first = sum(r["reward_e_share"] for r in logs[:3]) / 3
    last = sum(r["reward_e_share"] for r in logs[-3:]) / 3
    assert last > 1.2 * first, [r["reward_e_share"] for r in logs]
    assert all(r["kl"] == 0.0 for r in logs)  # beta 0: no reference, no KL


@pytest.mark.slow
def test_reward_model_folder_as_reward_with_lora_and_gguf(tiny_llama_dir, tiny_gguf_dir, sums, tmp_path, cli):
    # a reward model trained by --task reward on the toy preference
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_preference_rows(32, seed=3))
    rm = tmp_path / "rm"
    result = cli(
        "finetune",
        "--task",
        "reward",
        "--model",
        tiny_llama_dir,
        "--dataset",
        pairs,
        "-o",
        rm,
        "--max-steps",
        "2",
        "--set",
        "data.validation_split=0",
        "--set",
        "data.max_length=64",
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "lora"
    sets = (f"options.rewards=[math_answer,{rm}]", "peft.method=lora", "peft.r=4", "data.validation_split=0")
    result = grpo(cli, tiny_llama_dir, sums, out, *sets, steps=2)
    assert result.exit_code == 0, result.output
    assert "LoRA adapters:" in result.output and (out / "adapter").is_dir()
    logs = log_rows(out)
    assert "reward_rm" in logs[0] and logs[0]["reward_rm_std"] > 0
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # zero-initialised adapters: policy == reference
    # from a GGUF file
    gguf = tmp_path / "gguf"
    result = grpo(cli, tiny_gguf_dir, sums, gguf, "data.validation_split=0", "model.gguf_file=model.gguf", steps=1)
    assert result.exit_code == 0, result.output
    assert (gguf / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "sets, message",
    [
        (("options.prompt_column=nope",), "prompt column 'nope' (options.prompt_column) not found"),
        (("options.rewards=[maths]",), "unknown reward function 'maths'"),
        (("options.rewards=[{code}:boom]",), "raised RuntimeError: broken"),
        (("options.rewards=[{code}:wrong]",), "returned 1 values for 8 completions"),
        (("options.rewards=[{folder}]",), "is not a reward model"),
        (("options.answer_column=solution",), "no column 'solution' (options.answer_column"),
    ],
)
def test_bad_input_is_one_error_line(tiny_llama_dir, sums, tmp_path, cli, sets, message):
    code = tmp_path / "r.py"
    code.write_text(
        "def boom(prompts, completions, **kw):\n    raise RuntimeError('broken')\n"
        "def wrong(prompts, completions, **kw):\n    return [0.0]\n"
    )
    (tmp_path / "folder").mkdir()
    sets = tuple(s.format(code=code, folder=tmp_path / "folder") for s in sets)
    result = grpo(cli, tiny_llama_dir, sums, tmp_path / "o", *sets, "options.num_generations=2", steps=1)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_no_prompt_column(tiny_llama_dir, tmp_path, cli):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "answer": "1"}] * 4)
    result = grpo(cli, tiny_llama_dir, data, tmp_path / "o", "data.validation_split=0", steps=1)
    assert result.exit_code == 2 and "no prompt column found" in result.output, result.output


def test_messages_prompt_is_cut_after_the_last_user_turn():
    from llmtune.tasks.grpo.data import prompt_messages

    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert prompt_messages(chat, "messages", "be brief") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "2+2?"},
    ]
    with pytest.raises(LlmtuneError, match="no user turn"):
        prompt_messages([{"role": "assistant", "content": "4"}], "messages", None)


def test_smoke_recipe(tmp_path, cli):
    out = tmp_path / "smoke"
    result = cli("finetune", "--recipe", "grpo-smoke", "--max-steps", "2", "-o", out, "--set", "train.eval_strategy=no")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert metrics["eval_prompts"] == 16 and 0 <= metrics["eval_accuracy"] <= 1
    assert SimpleNamespace
