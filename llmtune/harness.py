"""Standard LLM benchmarks (HellaSwag, ARC, PIQA, WinoGrande, MMLU, ...) through EleutherAI's
lm-evaluation-harness: ``llmtune eval --benchmark`` and ``eval.benchmarks`` after training.

Not to be confused with :mod:`llmtune.tasks.common.lm_eval`, llmtune's own perplexity and
generation scoring of a task's data. Here llmtune only loads the model (output folders,
adapters-only folders, GGUF, Hub ids: :func:`llmtune.inference.loader.load_for_inference`) and
hands it to the harness's ``HFLM`` wrapper; prompts, scoring and standard errors are the
harness's. What llmtune adds: offline task configs (``llmtune/resources/_benchmarks``) pointed at
local files, one-line errors, a bounded default batch, the files a run writes, and the
before/after comparison of a training run.

Module level stays torch- and lm-eval-free.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError

#: the optional extra that installs lm-evaluation-harness
BENCH_EXTRA = "bench"
#: llmtune's offline task configs (YAML in the harness's format, data files as $BENCHMARK_DATA/...)
OFFLINE_CONFIGS = Path(__file__).parent / "resources" / "_benchmarks"
OFFLINE_BENCHMARKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "mmlu")
#: the offline configs a run used, with the data paths filled in, under its output folder
#: (``lm_eval --include_path OUTPUT/benchmark_tasks`` reruns them with the harness's own CLI)
RENDERED_DIR = "benchmark_tasks"
#: sequence length the default batch is sized for (multiple-choice prompts here are shorter)
BATCH_SIZING_TOKENS = 512
#: config keys of a task recorded in metrics.json: what decides the prompts and the scoring
RECORDED_CONFIG_KEYS = (
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "test_split",
    "validation_split",
    "fewshot_split",
    "description",
    "doc_to_text",
    "doc_to_choice",
    "doc_to_target",
    "target_delimiter",
    "fewshot_delimiter",
    "num_fewshot",
    "output_type",
    "metric_list",
    "generation_kwargs",
)


@dataclass(frozen=True)
class BenchmarkSettings:
    """What ``--benchmark`` runs and how (flags of ``eval``, or the ``eval.*`` config keys)."""

    benchmarks: tuple[str, ...]
    #: folder of local files in the Hub schemas (offline configs); None: the harness's Hub datasets
    data_dir: str | None = None
    num_fewshot: int | None = None
    #: rows per task: a count, or a fraction of the task when below 1 (the harness's --limit)
    limit: float | None = None
    #: None: sized so one batch's logits stay bounded (:func:`default_batch_size`)
    batch_size: int | None = None
    #: None: the harness's defaults (0 for Python's random, 1234 for numpy, torch and few-shot)
    seed: int | None = None
    chat_template: bool = False

    def check(self, names: dict[str, str] | None = None) -> None:
        """One error for bad values; ``names`` maps a field to the flag or key that set it."""
        name = {
            "benchmarks": "--benchmark",
            "num_fewshot": "--num-fewshot",
            "limit": "--limit",
            "batch_size": "--batch-size",
            "seed": "--seed",
            "data_dir": "--benchmark-data",
            **(names or {}),
        }
        if not self.benchmarks or any(not b for b in self.benchmarks):
            raise LlmtuneError(f"{name['benchmarks']} needs benchmark names, e.g. arc_easy,hellaswag")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise LlmtuneError(f"{name['num_fewshot']} must be >= 0, got {self.num_fewshot}")
        if self.limit is not None and self.limit <= 0:
            raise LlmtuneError(f"{name['limit']} must be > 0 (a row count, or a fraction below 1), got {self.limit:g}")
        if self.limit is not None and self.limit >= 1 and not float(self.limit).is_integer():
            raise LlmtuneError(
                f"{name['limit']} must be a whole number of rows or a fraction below 1, got {self.limit:g}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise LlmtuneError(f"{name['batch_size']} must be >= 1, got {self.batch_size}")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise LlmtuneError(f"{name['seed']} must be between 0 and 2**32-1, got {self.seed}")
        if self.data_dir is not None and not Path(self.data_dir).expanduser().is_dir():
            raise LlmtuneError(
                f"{name['data_dir']} {self.data_dir} is not a folder: pass the folder of benchmark files"
            )

    @property
    def harness_limit(self) -> int | float | None:
        if self.limit is None:
            return None
        return int(self.limit) if self.limit >= 1 else float(self.limit)


def require_lm_eval() -> str:
    """The installed harness's version; a one-line error naming the extra when it is missing."""
    try:
        from importlib.metadata import version

        import lm_eval  # noqa: F401

        return version("lm_eval")
    except ImportError:
        raise LlmtuneError(
            f"benchmarks need EleutherAI's lm-evaluation-harness: pip install 'llmtune[{BENCH_EXTRA}]'"
        ) from None


# ---------------------------------------------------------------------------------------------
# offline task configs


#: ``$BENCHMARK_DATA/<file name>`` in a shipped config: the local file it reads
PLACEHOLDER = re.compile(r"\$BENCHMARK_DATA/([A-Za-z0-9_.\-]+)")


def _placeholder_files(text: str) -> list[str]:
    """The data files a config reads (its comments left out)."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return PLACEHOLDER.findall(code)


def data_file(benchmark: str, data_dir: Path, wanted: str) -> Path:
    """The local file behind ``$BENCHMARK_DATA/<wanted>``: that name, or the one file whose name
    starts like it (``hellaswag_validation_sample500.jsonl`` for ``hellaswag_validation.jsonl``)."""
    exact = data_dir / wanted
    if exact.is_file():
        return exact.resolve()
    stem, dot, suffix = wanted.partition(".")
    found = sorted(p for p in data_dir.glob(f"{stem}*{dot}{suffix}") if p.is_file())
    if len(found) == 1:
        return found[0].resolve()
    if found:
        names = ", ".join(p.name for p in found)
        raise LlmtuneError(
            f"benchmark {benchmark}: several files in {data_dir} could be {wanted} ({names}): keep one, or name it {wanted}"
        )
    raise LlmtuneError(f"benchmark {benchmark}: data file {exact} not found (--benchmark-data): add it (Hub schema)")


def render_offline_configs(benchmarks: tuple[str, ...], data_dir: str | Path, out_dir: Path) -> Path:
    """Write the offline configs of ``benchmarks`` into ``out_dir`` with the local file paths
    filled in (checked first: a missing file names the benchmark and the file); returns the
    folder to give the harness's TaskManager as ``include_path``."""
    data = Path(data_dir).expanduser()
    unknown = [b for b in benchmarks if b not in OFFLINE_BENCHMARKS]
    if unknown:
        raise LlmtuneError(
            f"unknown benchmark {unknown[0]!r} for --benchmark-data: llmtune ships offline configs for "
            f"{', '.join(OFFLINE_BENCHMARKS)} (without --benchmark-data any lm-eval task runs from the Hub)"
        )
    files: dict[str, str] = {}
    for name in benchmarks:
        source = OFFLINE_CONFIGS / ("mmlu_subject.yaml.in" if name == "mmlu" else f"{name}.yaml")
        for wanted in _placeholder_files(source.read_text(encoding="utf-8")):
            files[wanted] = json.dumps(str(data_file(name, data, wanted)))  # a quoted YAML string
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    def header(source: str) -> str:
        return (
            f"# Written by llmtune from llmtune/resources/_benchmarks/{source} for --benchmark-data {data}; the\n"
            f"# harness's own CLI runs it as well: lm_eval --include_path {out_dir} --tasks ...\n"
        )

    def fill(text: str) -> str:
        code = (line for line in text.splitlines() if not line.lstrip().startswith("#"))
        return "\n".join(PLACEHOLDER.sub(lambda m: files[m.group(1)], line) for line in code) + "\n"

    for name in benchmarks:
        if name == "mmlu":
            _render_mmlu(
                header("mmlu_subject.yaml.in")
                + fill((OFFLINE_CONFIGS / "mmlu_subject.yaml.in").read_text(encoding="utf-8")),
                data,
                out_dir,
            )
        else:
            text = (OFFLINE_CONFIGS / f"{name}.yaml").read_text(encoding="utf-8")
            (out_dir / f"{name}.yaml").write_text(header(f"{name}.yaml") + fill(text), encoding="utf-8")
    return out_dir


def _render_mmlu(template: str, data: Path, out_dir: Path) -> None:
    """One task per subject of the validation file and the ``mmlu`` group over them."""
    path = data_file("mmlu", data, "mmlu_validation.jsonl")
    subjects: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                subject = json.loads(line)["subject"]
            except (ValueError, KeyError, TypeError):
                raise LlmtuneError(
                    f"benchmark mmlu: {path} line {number} is not a JSON row with a 'subject' (cais/mmlu schema)"
                ) from None
            if not isinstance(subject, str) or not re.fullmatch(r"[a-z0-9_]+", subject):
                raise LlmtuneError(
                    f"benchmark mmlu: {path} line {number}: subject {subject!r} is not a cais/mmlu subject"
                )
            subjects.add(subject)
    if not subjects:
        raise LlmtuneError(f"benchmark mmlu: {path} has no rows")
    for subject in sorted(subjects):
        text = template.replace("$SUBJECT_WORDS", subject.replace("_", " ")).replace("$SUBJECT", subject)
        (out_dir / f"mmlu_{subject}.yaml").write_text(text, encoding="utf-8")
    group = {
        "group": "mmlu",
        "task": [f"mmlu_{s}" for s in sorted(subjects)],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 2},
    }
    (out_dir / "_mmlu.yaml").write_text(json.dumps(group, indent=1), encoding="utf-8")


def task_manager(settings: BenchmarkSettings, out_dir: Path) -> Any:
    """The harness's TaskManager: llmtune's offline configs only (``--benchmark-data``), else the
    harness's own tasks; an unknown name is refused here, before any model is loaded."""
    from lm_eval.tasks import TaskManager

    if settings.data_dir is not None:
        include = render_offline_configs(settings.benchmarks, settings.data_dir, out_dir / RENDERED_DIR)
        return TaskManager(include_path=str(include), include_defaults=False)
    manager = TaskManager()
    for name in settings.benchmarks:
        if name not in manager.all_tasks:
            import difflib

            close = difflib.get_close_matches(name, manager.all_tasks, n=5)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise LlmtuneError(
                f"unknown benchmark {name!r}: not an lm-eval task, group or tag{hint}; standard ones: "
                f"{', '.join(OFFLINE_BENCHMARKS)}, gsm8k (`lm_eval ls tasks` lists all)"
            )
    return manager


# ---------------------------------------------------------------------------------------------
# running


def default_batch_size(model: Any, tokenizer: Any) -> int:
    """Rows per forward pass when --batch-size is not given: the harness scores a batch from
    its fp32 log-softmax over the vocabulary, so the batch is sized to keep that under the
    budget ``eval`` uses for perplexity, for prompts of :data:`BATCH_SIZING_TOKENS` tokens."""
    from llmtune.tasks.common.lm_eval import EVAL_LOGITS_BUDGET

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = getattr(head, "out_features", None) or getattr(model.config, "vocab_size", None) or len(tokenizer)
    return int(max(1, min(64, EVAL_LOGITS_BUDGET // (BATCH_SIZING_TOKENS * int(vocab) * 4 * 2))))


def _metric_values(result: dict) -> dict[str, Any]:
    """``{"acc,none": x, "acc_stderr,none": s}`` -> ``{"acc": x, "acc_stderr": s}`` (a filter
    other than ``none`` stays in the name: ``exact_match,strict-match`` and
    ``exact_match,strict-match_stderr``)."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if "," not in key:
            continue
        metric, _, filt = key.partition(",")
        name = metric
        if filt != "none":
            stderr = metric.endswith("_stderr")
            name = f"{metric.removesuffix('_stderr')},{filt}" + ("_stderr" if stderr else "")
        if isinstance(value, str):  # "N/A": no standard error for this metric
            value = None
        out[name] = value
    return out


def _sample_record(benchmark: str, task: str, sample: dict, metrics: list[str]) -> dict:
    args = sample.get("arguments") or []
    record: dict[str, Any] = {"benchmark": benchmark, "task": task, "doc_id": sample.get("doc_id")}
    resps = sample.get("filtered_resps") or []
    if args and all(isinstance(a, (list, tuple)) and len(a) == 2 and isinstance(a[1], str) for a in args):
        # loglikelihood requests: one (context, continuation) per choice
        contexts = [a[0] for a in args]
        if len(set(contexts)) == 1:
            record["prompt"] = contexts[0]
            record["choices"] = [a[1] for a in args]
        else:  # one continuation after several contexts (winogrande's partial scoring)
            record["contexts"] = contexts
            record["continuation"] = args[0][1]
        record["loglikelihoods"] = [r[0] if isinstance(r, (list, tuple)) else r for r in resps]
    else:
        record["arguments"] = args
        record["responses"] = resps
    record["target"] = sample.get("target")
    for metric in metrics:
        if metric in sample:
            record[metric] = sample[metric]
    return record


def run_benchmarks(
    model: Any, tokenizer: Any, settings: BenchmarkSettings, out_dir: Path, manager: Any
) -> tuple[dict, list[dict]]:
    """Score ``model`` on every benchmark through the harness; returns (summary, per-sample rows).

    Each benchmark is its own ``simple_evaluate`` call (timed: samples/s per benchmark); the
    summary holds per benchmark its metrics with standard errors, row count, version, few-shot
    count and, for a group (mmlu), its tasks' metrics; plus the harness version and the settings.
    """
    import logging

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if logging.getLogger("lm_eval").getEffectiveLevel() < logging.ERROR and not _debug():
        logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-request notes; --debug shows them
    batch = settings.batch_size or default_batch_size(model, tokenizer)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch)
    seeds: dict[str, Any] = {}
    if settings.seed is not None:
        seeds = {
            k: settings.seed for k in ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")
        }
    benchmarks: dict[str, Any] = {}
    tasks: dict[str, Any] = {}
    records: list[dict] = []
    for name in settings.benchmarks:
        started = time.perf_counter()
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[name],
            task_manager=manager,
            num_fewshot=settings.num_fewshot,
            limit=settings.harness_limit,
            log_samples=True,
            apply_chat_template=settings.chat_template,
            fewshot_as_multiturn=settings.chat_template,
            **seeds,
        )
        seconds = time.perf_counter() - started
        results = out["results"]
        members = [t for t in out.get("samples", {}) if t != name]
        rows = sum(int(out["n-samples"][t]["effective"]) for t in out.get("samples", {}))
        entry: dict[str, Any] = _metric_values(results.get(name, {}))
        entry.update(
            {
                "rows": rows,
                "version": out["versions"].get(name),
                "num_fewshot": out["n-shot"].get(name, _shared(out["n-shot"], members)),
                "seconds": round(seconds, 3),
                "samples_per_second": round(rows / seconds, 3) if seconds > 0 else None,
            }
        )
        if members:
            entry["tasks"] = {
                t: {**_metric_values(results.get(t, {})), "rows": int(out["n-samples"][t]["effective"])}
                for t in members
            }
        benchmarks[name] = entry
        for task, samples in out.get("samples", {}).items():
            config = out["configs"].get(task, {})
            tasks[task] = {
                "version": out["versions"].get(task),
                "num_fewshot": out["n-shot"].get(task),
                **{k: config[k] for k in RECORDED_CONFIG_KEYS if config.get(k) is not None},
            }
            metrics = [m["metric"] for m in config.get("metric_list", []) if isinstance(m, dict) and "metric" in m]
            records += [_sample_record(name, task, s, metrics) for s in samples]
        config_info = out.get("config", {})
    summary = {
        "benchmarks": benchmarks,
        "harness": {
            "lm_eval_version": out.get("lm_eval_version"),
            "transformers_version": out.get("transformers_version"),
            "settings": {
                **{k: v for k, v in asdict(settings).items() if k != "benchmarks"},
                "batch_size": batch,
                "limit": settings.harness_limit,
                "seeds": seeds or "harness defaults (random 0, numpy/torch/few-shot 1234)",
                "max_length": out.get("max_length"),
                "device": str(config_info.get("device") or getattr(model, "device", "")),
            },
            "tasks": tasks,
        },
    }
    if settings.data_dir is not None:
        summary["harness"]["include_path"] = str(out_dir / RENDERED_DIR)
    return summary, records


def _debug() -> bool:
    import os

    return os.environ.get("LLMTUNE_DEBUG", "") not in ("", "0")


def _shared(values: dict, keys: list[str]) -> Any:
    found = {values.get(k) for k in keys}
    return found.pop() if len(found) == 1 else None


def table_rows(benchmarks: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(benchmark, metric, value, stderr) rows of the table; a tag without scores of its own
    (e.g. ai2_arc) shows its tasks'."""
    from llmtune.outputs import benchmark_metrics

    rows = []
    for name, entry in benchmarks.items():
        parts = [(name, entry)]
        if not benchmark_metrics(entry) and entry.get("tasks"):
            parts = list(entry["tasks"].items())
        for label, values in parts:
            for metric in benchmark_metrics(values):
                rows.append((label, metric, _num(values.get(metric)), _num(values.get(f"{metric}_stderr"))))
    return rows


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def render_table(benchmarks: dict[str, dict], title: str) -> str:
    rows = [("benchmark", "metric", "value", "stderr"), *table_rows(benchmarks)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(rows[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows[1:]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# commands: `llmtune eval --benchmark` and the after-training comparison


def load_causal_lm(
    model: str,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    sets: list[str] | None = None,
    debug: bool = False,
) -> Any:
    """``model`` (output folder, adapters-only folder, GGUF in a folder, Hub id) loaded as a
    causal LM for the harness; anything else is refused in one line before its weights load."""
    from llmtune.inference.loader import inference_config, load_for_inference
    from llmtune.tasks import get_task

    cfg, path = inference_config(model, None, sets, gguf_file, trust_remote_code, generative=True)
    task = get_task(cfg.task)
    if not (task.generative or task.causal_lm_loss):  # dpo trains a causal LM too
        raise LlmtuneError(
            f"--model {model} is a {task.name} model, not a causal language model: benchmarks score "
            f"causal LMs (trained with clm, sft, dpo, grpo..., or a Hub causal LM)"
        )
    from llmtune.modeling import load_config

    config = load_config(path, cfg.model) if not (Path(path) / "adapter_config.json").is_file() else None
    if config is not None:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise LlmtuneError(
                f"--model {model} is a {config.model_type} model without a causal LM head: benchmarks score "
                f"causal language models (decoder-only, e.g. Llama, GPT-2, SmolLM)"
            )
    return load_for_inference(
        model, None, sets, gguf_file, trust_remote_code, generative=True, debug=debug, require_generative=False
    )


def default_eval_dir(model_path: str) -> Path:
    """MODEL/eval for a local folder; outputs/eval/ORG_NAME for a Hub id."""
    path = Path(model_path)
    if path.is_dir():
        return path / "eval"
    return Path("outputs") / "eval" / model_path.replace("/", "_")


def evaluate_model(
    model: str,
    settings: BenchmarkSettings,
    output_dir: str | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    sets: list[str] | None = None,
    quiet: bool = False,
    debug: bool = False,
) -> dict:
    """``llmtune eval --benchmark``: score ``model``, print the table, write metrics.json (the
    scores with standard errors, harness and task versions, prompts and settings) and
    predictions.jsonl (one row per scored document)."""
    from llmtune.console import echo, quiet_libraries
    from llmtune.modeling import model_location
    from llmtune.outputs import (
        METRICS_FILE,
        PREDICTIONS_FILE,
        check_output_dir,
        removed_on_failure,
        write_json,
        write_jsonl,
    )

    settings.check()
    harness_version = require_lm_eval()
    path = model_location(model)
    out = Path(output_dir) if output_dir else default_eval_dir(path)
    check_output_dir(out, overwrite=True)
    quiet_libraries(debug)
    with removed_on_failure(out):
        manager = task_manager(settings, out)  # unknown names and missing files: before the model loads
        ctx = load_causal_lm(model, gguf_file, trust_remote_code, sets, debug)
        if not quiet:
            echo(f"llmtune: lm-evaluation-harness {harness_version}: {', '.join(settings.benchmarks)} on {path}")
        summary, records = run_benchmarks(ctx.model, ctx.tokenizer, settings, out, manager)
        summary = {"model": path, **({"gguf_file": gguf_file} if gguf_file else {}), **summary}
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / METRICS_FILE, summary)
        write_jsonl(out / PREDICTIONS_FILE, records)
    echo(render_table(summary["benchmarks"], f"benchmarks ({_limit_note(settings)})"))
    if not quiet:
        speed = ", ".join(f"{n} {e['samples_per_second']:g}/s" for n, e in summary["benchmarks"].items())
        echo(f"\nsamples/s: {speed}\n{METRICS_FILE} and {PREDICTIONS_FILE} ({len(records)} rows) written to {out}")
    return summary


def _limit_note(settings: BenchmarkSettings) -> str:
    shots = "zero-shot" if not settings.num_fewshot else f"{settings.num_fewshot}-shot"
    parts = [shots, "offline" if settings.data_dir else "Hub data"]
    if settings.limit is not None:
        parts.append(f"limit {settings.harness_limit:g}")
    if settings.chat_template:
        parts.append("chat template")
    return ", ".join(parts)


def settings_from_config(cfg: Any) -> BenchmarkSettings | None:
    """The ``eval.*`` keys of a training run as settings (None when eval.benchmarks is empty)."""
    e = cfg.eval
    if not e.benchmarks:
        return None
    return BenchmarkSettings(
        benchmarks=tuple(e.benchmarks),
        data_dir=e.benchmark_data,
        num_fewshot=e.num_fewshot,
        limit=e.limit,
        batch_size=cfg.train.eval_batch_size,
        seed=cfg.train.seed,
        chat_template=e.chat_template,
    )


CONFIG_KEYS = {
    "benchmarks": "eval.benchmarks",
    "data_dir": "eval.benchmark_data",
    "limit": "eval.limit",
    "num_fewshot": "eval.num_fewshot",
    "batch_size": "train.eval_batch_size",
    "seed": "train.seed",
}


def check_before_training(cfg: Any) -> None:
    """eval.benchmarks: the harness installed, the names known and the offline files there,
    before training starts rather than after it."""
    settings = settings_from_config(cfg)
    if settings is None:
        return
    settings.check(CONFIG_KEYS)
    require_lm_eval()
    if settings.data_dir is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            render_offline_configs(settings.benchmarks, settings.data_dir, Path(tmp) / RENDERED_DIR)
    else:
        task_manager(settings, Path("."))


#: per-document rows of the benchmarks scored after training (predictions.jsonl is the task's)
BENCHMARK_PREDICTIONS_FILE = "benchmark_predictions.jsonl"


def before_after(cfg: Any, output_dir: Path, debug: bool = False) -> dict:
    """Score the starting model (``model.name_or_path``; none when training from scratch) and the
    trained model saved in ``output_dir`` on ``eval.benchmarks``; returns metrics.json's
    ``benchmarks`` entry and writes :data:`BENCHMARK_PREDICTIONS_FILE`."""
    import gc

    from llmtune.outputs import write_jsonl

    settings = settings_from_config(cfg)
    assert settings is not None
    manager = task_manager(settings, output_dir)
    m = cfg.model
    result: dict[str, Any] = {"starting_model": m.name_or_path, "before": None}
    rows: list[dict] = []
    if m.name_or_path:
        ctx = load_causal_lm(m.name_or_path, m.gguf_file, m.trust_remote_code, debug=debug)
        before, records = run_benchmarks(ctx.model, ctx.tokenizer, settings, output_dir, manager)
        result["before"] = before["benchmarks"]
        rows += [{"model": "before", **r} for r in records]
        del ctx
        gc.collect()
    else:
        result["note"] = "trained from scratch (model.config): no starting model to score"
    ctx = load_causal_lm(str(output_dir), debug=debug)
    after, records = run_benchmarks(ctx.model, ctx.tokenizer, settings, output_dir, manager)
    result["after"] = after["benchmarks"]
    result["harness"] = after["harness"]
    rows += [{"model": "after", **r} for r in records]
    write_jsonl(output_dir / BENCHMARK_PREDICTIONS_FILE, rows)
    return result


def comparison_table(benchmarks: dict) -> str:
    """The console's before/after table of a training run's ``benchmarks`` entry."""
    from llmtune.outputs import benchmark_comparison

    def num(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, (int, float)) else "-"

    rows = [("benchmark", "metric", "before", "after", "stderr")]
    rows += [(n, m, num(b), num(a), num(s)) for n, m, b, a, s in benchmark_comparison(benchmarks)]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["benchmarks before/after training (lm-evaluation-harness)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
