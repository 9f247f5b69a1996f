"""Terminal output: only the main process prints; library chatter is silenced unless --debug."""

from __future__ import annotations

import os
import sys


def is_main_process() -> bool:
    from llmtune.launch import distributed_state

    return distributed_state().is_main_process


def echo(msg: str = "", err: bool = False) -> None:
    if is_main_process():
        print(msg, file=sys.stderr if err else sys.stdout, flush=True)


def metrics_table(title: str, metrics: dict) -> str:
    rows = [(k, v) for k, v in metrics.items() if v is not None]
    if not rows:
        return ""
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * max(len(title), width + 14)]
    for key, value in rows:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown:>12}")
    return "\n".join(lines)


def quiet_libraries(debug: bool) -> None:
    import datasets
    import transformers

    if not debug:
        import warnings

        # Library deprecation notices (e.g. TrainingArguments renames) are for developers, not users.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        transformers.logging.set_verbosity_error()
        # CRITICAL, not ERROR: datasets logs parse failures itself before raising; we report them
        # in one line (with the file's line number) instead.
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)
        import logging

        # bitsandbytes (imported by peft) warns on every CPU import that its optional CPU 4-bit
        # kernels are missing: not the user's concern (QLoRA itself is refused on CPU).
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        datasets.disable_progress_bars()
        import logging

        # bitsandbytes (pulled in by GGUF / quantized loading) warns about optional CPU kernels.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        transformers.utils.logging.disable_progress_bar()  # shard-writing bars; Trainer's bar stays
        # bitsandbytes (the quant extra), imported lazily by transformers, reports missing optional
        # CPU kernels and re-registered torch ops on every import: noise for anyone not quantizing.
        import logging

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message=".*previously registered kernel.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
