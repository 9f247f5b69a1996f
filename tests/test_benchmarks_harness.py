"""`llmtune eval --benchmark` and `eval.benchmarks` through lm-evaluation-harness, offline.

Tiny benchmark files in the shipped schemas (the Hub schemas of ARC, HellaSwag, PIQA, WinoGrande
and MMLU) are written here; a tiny Llama built from a config is scored. The scores are checked
against the harness's own ``simple_evaluate`` on the same model and the same task configs.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

OFFLINE = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "mmlu")
WORDS = ["the", "dog", "cat", "house", "car", "big", "small", "red", "green", "runs", "sleeps", "sees", "old", "new"]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_benchmark_files(folder: Path, n: int = 6, seed: int = 0) -> Path:
    """Every offline benchmark's files, ``n`` rows each (MMLU: two subjects), in the Hub schemas."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("arc_easy", "arc_challenge"):
        rows = []
        for i in range(n):
            labels = ["A", "B", "C", "D"] if i % 3 else ["1", "2", "3"]  # ARC has both label styles
            rows.append(
                {
                    "id": f"{name}-{i}",
                    "question": _sentence(rng, 6) + "?",
                    "choices": {"text": [_sentence(rng, rng.randint(1, 4)) for _ in labels], "label": labels},
                    "answerKey": rng.choice(labels),
                }
            )
        _jsonl(folder / f"{name}_validation.jsonl", rows)
    # HellaSwag as the shared development copy has it: one `context` column (no ctx_a/ctx_b)
    _jsonl(
        folder / "hellaswag_validation_sample6.jsonl",
        [
            {
                "context": _sentence(rng, 8) + " [title] " + _sentence(rng, 3),
                "endings": [_sentence(rng, rng.randint(2, 5)) for _ in range(4)],
                "label": rng.randrange(4),
                "activity_label": "Pets",
                "source_id": f"wikihow~{i}",
            }
            for i in range(n)
        ],
    )
    _jsonl(
        folder / "piqa_validation.jsonl",
        [
            {"goal": _sentence(rng, 5), "sol1": _sentence(rng, 4), "sol2": _sentence(rng, 5), "label": rng.randrange(2)}
            for _ in range(n)
        ],
    )
    _jsonl(
        folder / "winogrande_validation.jsonl",
        [
            {
                "sentence": f"the dog sees the cat because _ {_sentence(rng, 3)}.",
                "option1": "dog",
                "option2": "cat",
                "answer": rng.choice("12"),
            }
            for _ in range(n)
        ],
    )
    for split, count in (("validation", n), ("dev", 2)):
        _jsonl(
            folder / f"mmlu_{split}.jsonl",
            [
                {
                    "question": _sentence(rng, 6),
                    "subject": subject,
                    "choices": [_sentence(rng, 2) for _ in range(4)],
                    "answer": rng.randrange(4),
                }
                for subject in ("anatomy", "high_school_physics")
                for _ in range(count)
            ],
        )
    return folder


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory) -> Path:
    return write_benchmark_files(tmp_path_factory.mktemp("bench-data"))


@pytest.fixture(scope="module")
def scored(tiny_llama_dir, bench_data, tmp_path_factory):
    """One `llmtune eval --benchmark` over every offline config (module-scoped: several tests read it)."""
    from typer.testing import CliRunner

    from llmtune.cli import app

    out = tmp_path_factory.mktemp("bench-out") / "eval"
    args = [
        "eval",
        "--model",
        str(tiny_llama_dir),
        "--benchmark",
        ",".join(OFFLINE),
        "--benchmark-data",
        str(bench_data),
    ]
    args += ["--output-dir", str(out), "--batch-size", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return result.output, metrics, records, out


@pytest.mark.slow
def test_eval_benchmark_scores_every_offline_config(scored, bench_data):
    output, metrics, records, out = scored
    winogrande = [json.loads(x) for x in (bench_data / "winogrande_validation.jsonl").read_text().splitlines()]
    bench = metrics["benchmarks"]
    assert list(bench) == list(OFFLINE)
    for name in OFFLINE:
        entry = bench[name]
        expected_rows = 12 if name == "mmlu" else 6  # mmlu: 2 subjects x 6 rows
        assert entry["rows"] == expected_rows
        assert 0.0 <= entry["acc"] <= 1.0 and entry["acc_stderr"] >= 0
        if name not in ("winogrande", "mmlu"):  # the harness scores acc_norm where the task defines it
            assert 0.0 <= entry["acc_norm"] <= 1.0 and entry["acc_norm_stderr"] >= 0
        assert entry["samples_per_second"] > 0
        mine = [r for r in records if r["benchmark"] == name]
        assert len(mine) == expected_rows
        # acc is the mean over the documents: each row's 0/1 agrees with its loglikelihoods
        for r in mine:
            best = max(range(len(r["loglikelihoods"])), key=lambda i: r["loglikelihoods"][i])
            if name == "winogrande":  # one continuation after each option: the gold is the answer
                assert r["continuation"] and len(r["contexts"]) == 2
                gold = int(winogrande[r["doc_id"]]["answer"]) - 1
            else:
                assert len(r["choices"]) == len(r["loglikelihoods"])
                gold = r["target"]
            assert r["acc"] == float(best == gold)
        assert entry["acc"] == pytest.approx(sum(r["acc"] for r in mine) / len(mine))
        # the stderr of a task is the harness's sample standard error of the mean (mmlu, a group,
        # pools its tasks' variances)
        n, p = len(mine), entry["acc"]
        if name != "mmlu":
            assert entry["acc_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), abs=1e-9)
    assert sorted(bench["mmlu"]["tasks"]) == ["mmlu_anatomy", "mmlu_high_school_physics"]
    harness = metrics["harness"]
    from importlib.metadata import version

    import lm_eval  # noqa: F401

    assert harness["lm_eval_version"] == version("lm_eval")
    assert harness["settings"]["batch_size"] == 4 and harness["settings"]["chat_template"] is False
    # prompts and versions recorded per task
    assert harness["tasks"]["arc_easy"]["doc_to_text"] == "Question: {{question}}\nAnswer:"
    assert harness["tasks"]["arc_easy"]["version"] == 1.0
    # the rendered configs are kept and named in metrics.json (the harness's CLI can rerun them)
    assert Path(harness["include_path"]) == out / "benchmark_tasks"
    assert (out / "benchmark_tasks" / "mmlu_anatomy.yaml").is_file()
    # the table: acc, acc_norm and standard errors
    assert "acc_norm" in output and "stderr" in output and "arc_challenge" in output
    # hellaswag rows with one `context` column: the prompt is the harness's preprocessing of it
    hs = next(r for r in records if r["benchmark"] == "hellaswag")
    assert hs["prompt"].startswith("Pets: ") and "[title]" not in hs["prompt"]


@pytest.mark.slow
def test_scores_equal_the_harness_simple_evaluate(scored, tiny_llama_dir):
    """The same model through the harness's own entry point, on the configs llmtune rendered:
    identical acc/acc_norm, identical per-choice loglikelihoods."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, metrics, records, out = scored
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(tiny_llama_dir), batch_size=4)
    manager = TaskManager(include_path=str(out / "benchmark_tasks"), include_defaults=False)
    theirs = lm_eval.simple_evaluate(model=lm, tasks=list(OFFLINE), task_manager=manager, log_samples=True)
    for name in OFFLINE:
        for metric in ("acc", "acc_norm"):
            key = f"{metric},none"
            if key in theirs["results"][name]:
                assert metrics["benchmarks"][name][metric] == theirs["results"][name][key], (name, metric)
                assert metrics["benchmarks"][name][f"{metric}_stderr"] == pytest.approx(
                    theirs["results"][name][f"{metric}_stderr,none"]
                )
    ll = {(r["task"], r["doc_id"]): r["loglikelihoods"] for r in records}
    for task, samples in theirs["samples"].items():
        for s in samples:
            assert ll[(task, s["doc_id"])] == pytest.approx([r[0] for r in s["filtered_resps"]], abs=1e-5)


@pytest.mark.slow
def test_limit_seed_fewshot_and_chat_template_reach_the_harness(tiny_llama_dir, bench_data, tmp_path, cli):
    out = tmp_path / "eval"
    args = ["eval", "-m", tiny_llama_dir, "--benchmark", "mmlu,arc_easy", "--benchmark-data", bench_data, "-o", out]
    result = cli(*args, "--limit", "2", "--num-fewshot", "1", "--seed", "7", "--chat-template", "-q")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmarks"]["mmlu"]["rows"] == 4 and metrics["benchmarks"]["arc_easy"]["rows"] == 2
    assert metrics["benchmarks"]["arc_easy"]["num_fewshot"] == 1
    assert metrics["harness"]["settings"]["seeds"]["fewshot_random_seed"] == 7
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    mmlu = [r for r in rows if r["benchmark"] == "mmlu"]
    # chat template (ChatML) around a prompt holding one dev example of the same subject
    assert all(r["prompt"].startswith("<|im_start|>") for r in rows)
    dev = [json.loads(line) for line in (bench_data / "mmlu_dev.jsonl").read_text().splitlines()]
    anatomy = next(r for r in mmlu if r["task"] == "mmlu_anatomy")
    assert dev[0]["question"] in anatomy["prompt"] and "about anatomy" in anatomy["prompt"]


@pytest.mark.slow
def test_gguf_model_scores_like_its_source_weights(scored, tiny_gguf_dir, bench_data, tmp_path, cli):
    """--gguf-file: the F32 GGUF of the tiny Llama, de-quantized on load, gives the log-likelihoods
    of the folder it was written from."""
    out = tmp_path / "eval"
    args = [
        "eval",
        "-m",
        tiny_gguf_dir,
        "--gguf-file",
        "model.gguf",
        "--benchmark",
        "piqa",
        "--benchmark-data",
        bench_data,
    ]
    result = cli(*args, "-o", out, "--batch-size", "4")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    _, metrics, records, _ = scored
    source = {r["doc_id"]: r["loglikelihoods"] for r in records if r["task"] == "piqa"}
    assert len(rows) == len(source) == 6
    for r in rows:
        assert r["loglikelihoods"] == pytest.approx(source[r["doc_id"]], abs=1e-3)
    assert (
        json.loads((out / "metrics.json").read_text())["benchmarks"]["piqa"]["acc"]
        == metrics["benchmarks"]["piqa"]["acc"]
    )


# ---- bad input: one line, exit 2 ------------------------------------------------------------------


def test_missing_offline_file_names_the_benchmark_and_the_file(tiny_llama_dir, bench_data, tmp_path, cli):
    data = tmp_path / "data"
    shutil.copytree(bench_data, data)
    (data / "piqa_validation.jsonl").unlink()
    out = tmp_path / "eval"
    result = cli("eval", "-m", tiny_llama_dir, "--benchmark", "arc_easy,piqa", "--benchmark-data", data, "-o", out)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: benchmark piqa:")
    assert str(data / "piqa_validation.jsonl") in lines[0]
    assert not out.exists()  # a failed eval leaves no folder behind


def test_two_candidate_files_are_refused(tiny_llama_dir, bench_data, tmp_path, cli):
    data = tmp_path / "data"
    shutil.copytree(bench_data, data)
    shutil.copy(data / "hellaswag_validation_sample6.jsonl", data / "hellaswag_validation_other.jsonl")
    result = cli(
        "eval", "-m", tiny_llama_dir, "--benchmark", "hellaswag", "--benchmark-data", data, "-o", tmp_path / "o"
    )
    assert result.exit_code == 2 and "several files" in result.output and "hellaswag_validation_other" in result.output


def test_unknown_offline_benchmark_lists_the_known_ones(tiny_llama_dir, bench_data, tmp_path, cli):
    result = cli("eval", "-m", tiny_llama_dir, "--benchmark", "arc_easy,hellaswog", "--benchmark-data", bench_data)
    assert result.exit_code == 2
    assert "unknown benchmark 'hellaswog'" in result.output
    assert all(name in result.output for name in OFFLINE)


def test_unknown_hub_benchmark_suggests_close_names(tiny_llama_dir, tmp_path, cli):
    result = cli("eval", "-m", tiny_llama_dir, "--benchmark", "hellaswog", "-o", tmp_path / "o")
    assert result.exit_code == 2
    assert "unknown benchmark 'hellaswog'" in result.output and "hellaswag" in result.output


def test_model_that_is_not_a_causal_lm_is_refused(tiny_t5_dir, tiny_bert_dir, bench_data, tmp_path, cli):
    result = cli("eval", "-m", tiny_t5_dir, "--benchmark", "piqa", "--benchmark-data", bench_data, "-o", tmp_path / "a")
    assert result.exit_code == 2 and "without a causal LM head" in result.output
    trained = tmp_path / "sentiment-model"
    shutil.copytree(tiny_bert_dir, trained)
    (trained / "llmtune_config.yaml").write_text("task: sentiment\n", encoding="utf-8")
    result = cli("eval", "-m", trained, "--benchmark", "piqa", "--benchmark-data", bench_data, "-o", tmp_path / "b")
    assert result.exit_code == 2 and "is a sentiment model, not a causal language model" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "5"], "--limit only applies with --benchmark"),
        (["--chat-template"], "--chat-template only applies with --benchmark"),
        (["--benchmark", "piqa", "--dataset", "x.jsonl"], "--dataset does not apply with --benchmark"),
        (["--benchmark", "piqa", "--limit", "0"], "--limit must be > 0"),
        (["--benchmark", "piqa", "--limit", "2.5"], "--limit must be a whole number"),
        (["--benchmark", "piqa", "--num-fewshot", "-1"], "--num-fewshot must be >= 0"),
        (
            ["--benchmark", "piqa", "--benchmark-data", "/nonexistent/dir"],
            "--benchmark-data /nonexistent/dir is not a folder",
        ),
    ],
)
def test_bad_benchmark_flags(tiny_llama_dir, args, message, cli):
    result = cli("eval", "-m", tiny_llama_dir, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_missing_harness_names_the_extra(tiny_llama_dir, bench_data, monkeypatch, cli):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    result = cli("eval", "-m", tiny_llama_dir, "--benchmark", "piqa", "--benchmark-data", bench_data)
    assert result.exit_code == 2
    assert "pip install 'llmtune[bench]'" in result.output


def test_eval_benchmarks_need_a_causal_lm_task(cli, sentiment_csv):
    result = cli(
        "finetune", "--task", "sentiment", "--dataset", sentiment_csv, "--set", "eval.benchmarks=[piqa]", "--dry-run"
    )
    assert result.exit_code == 2
    assert "eval.benchmarks score causal language models" in result.output


def test_shipped_prompts_are_the_harness_prompts():
    """The offline configs keep the harness's prompts, choices, targets, metrics and versions
    (only the data source and split differ), so offline scores compare with the harness's."""
    import lm_eval.tasks
    import yaml

    from llmtune.harness import OFFLINE_CONFIGS

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: "!function " + loader.construct_scalar(node))
    harness = Path(lm_eval.tasks.__file__).parent
    sources = {
        "arc_easy.yaml": "arc/arc_easy.yaml",
        "arc_challenge.yaml": "arc/arc_easy.yaml",  # the harness's arc_challenge includes arc_easy
        "piqa.yaml": "piqa/piqa.yaml",
        "hellaswag.yaml": "hellaswag/hellaswag.yaml",
        "winogrande.yaml": "winogrande/default.yaml",
        "mmlu_subject.yaml.in": "mmlu/default/_default_template_yaml",
    }
    for ours_name, theirs_name in sources.items():
        ours = yaml.load((OFFLINE_CONFIGS / ours_name).read_text(), Loader=Loader)
        theirs = yaml.load((harness / theirs_name).read_text(), Loader=Loader)
        for key in ("doc_to_text", "doc_to_target", "doc_to_choice", "output_type", "metric_list", "metadata"):
            mine, reference = ours[key], theirs[key]
            if isinstance(reference, str) and reference.startswith("!function preprocess_winogrande."):
                assert mine == reference.replace("!function ", "!function lm_eval.tasks.winogrande."), ours_name
            else:
                assert mine == reference, (ours_name, key)
        if "fewshot_config" in theirs:
            assert ours["fewshot_config"] == theirs["fewshot_config"]


# ---- after training: before/after ---------------------------------------------------------------


@pytest.mark.slow
def test_benchmarks_before_and_after_training(tiny_llama_dir, bench_data, scored, tmp_path, cli):
    from tests.conftest import make_sft_rows

    data = tmp_path / "sft"
    data.mkdir()
    _jsonl(data / "train.jsonl", make_sft_rows(32, seed=1))
    out = tmp_path / "run"
    args = ["finetune", "--task", "sft", "--model", tiny_llama_dir, "--dataset", data, "--output-dir", out]
    args += ["--max-steps", "4", "--lr", "5e-3", "--batch-size", "8", "--seed", "0"]
    sets = [
        "train.eval_strategy=no",
        "data.validation_split=0",
        "options.num_samples=0",
        "peft.method=lora",  # adapters only: the trained model loads on top of its base
        "peft.merge=false",
        "eval.benchmarks=[arc_easy,piqa]",
        f"eval.benchmark_data={bench_data}",
        "train.eval_batch_size=4",
    ]
    for item in sets:
        args += ["--set", item]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert (out / "adapter_config.json").is_file()
    bench = json.loads((out / "metrics.json").read_text())["benchmarks"]
    assert bench["starting_model"] == str(tiny_llama_dir)
    assert set(bench["before"]) == set(bench["after"]) == {"arc_easy", "piqa"}
    # "before" is the starting model: what `llmtune eval --benchmark` gave for it on the same files
    _, evaluated, _, _ = scored
    for name in ("arc_easy", "piqa"):
        for metric in ("acc", "acc_norm"):
            assert bench["before"][name][metric] == evaluated["benchmarks"][name][metric]
    rows = [json.loads(line) for line in (out / "benchmark_predictions.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"before", "after"} and len(rows) == 2 * (6 + 6)
    # the trained model's loglikelihoods differ from the starting model's: it was trained
    before = {(r["task"], r["doc_id"]): r["loglikelihoods"] for r in rows if r["model"] == "before"}
    assert any(r["loglikelihoods"] != before[(r["task"], r["doc_id"])] for r in rows if r["model"] == "after")
    card = (out / "README.md").read_text()
    assert "## Benchmarks" in card and "| arc_easy | acc_norm |" in card
    assert "benchmarks before/after training" in result.output
    report = cli("report", out)
    assert report.exit_code == 0, report.output
    line = next(x for x in report.output.splitlines() if x.startswith("piqa acc "))
    assert f"{bench['before']['piqa']['acc']:.4f}" in line and f"{bench['after']['piqa']['acc']:.4f}" in line


def test_metric_names_and_table_rows_of_filtered_and_tag_results():
    """Harness result keys become metrics.json names; a filtered metric keeps its stderr pairing,
    and a tag without scores of its own shows its tasks in the table."""
    from llmtune.harness import _metric_values, table_rows

    values = _metric_values(
        {
            "alias": "gsm8k",
            "exact_match,strict-match": 0.25,
            "exact_match_stderr,strict-match": 0.05,
            "acc_stderr,none": "N/A",
        }
    )
    assert values == {"exact_match,strict-match": 0.25, "exact_match,strict-match_stderr": 0.05, "acc_stderr": None}
    rows = table_rows(
        {
            "gsm8k": {**values, "rows": 4},
            "ai2_arc": {
                "rows": 8,
                "tasks": {"arc_easy": {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.25, "acc_norm_stderr": 0.2}},
            },
        }
    )
    assert rows == [
        ("gsm8k", "exact_match,strict-match", "0.2500", "0.0500"),
        ("arc_easy", "acc", "0.5000", "0.1000"),
        ("arc_easy", "acc_norm", "0.2500", "0.2000"),
    ]
