"""Sequence-to-sequence fine-tuning: ``summarization`` and ``translation``.

One class serves both tasks (they differ in column defaults, metrics and the translation data
layouts): ``AutoModelForSeq2SeqLM`` + ``Seq2SeqTrainer`` with ``predict_with_generate``,
``DataCollatorForSeq2Seq`` (labels padded with -100), an optional T5-style source prefix, and
generation settings (``num_beams``, ``max_new_tokens``) stored in the model's generation config so
a saved model generates the same way. Summaries are scored with ROUGE-1/2/L/Lsum, translations
with sacreBLEU and chrF (:mod:`llmtune.metrics.generation`).

Translation data may come as
- rows with a ``translation`` dict (``{"translation": {"en": ..., "de": ...}}``, the Hub layout),
- flat columns (``en``/``de``, ``source``/``target``, or named with ``options.source_column``),
- parallel text files, one sentence per line: a folder with ``train.src``/``train.tgt`` (also
  ``.source``/``.target`` or ``train.<source_lang>``/``train.<target_lang>``, and validation/test
  pairs alike), or a pair ``--dataset FILE.src,FILE.tgt`` (or one side, ``--dataset train.en``,
  with its counterpart found next to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.config import bounded
from llmtune.errors import LlmtuneError, one_line
from llmtune.tasks.base import RunContext, Task, predict_outputs, require_content, sequence_limit, tokenize_split

SUMMARY_SOURCES = ("document", "dialogue", "article", "text", "content", "source", "input")
SUMMARY_TARGETS = ("summary", "highlights", "abstract", "target", "output")
TRANSLATION_SOURCES = ("source", "src", "input")
TRANSLATION_TARGETS = ("target", "tgt", "output")
# File suffixes of parallel text files, by side.
PARALLEL_SIDES = {"src": "source", "source": "source", "tgt": "target", "target": "target"}


@dataclass
class Seq2SeqOptions:
    # Input and output text columns; None = auto-detect (see the task's candidates).
    source_column: str | None = None
    target_column: str | None = None
    # Prepended to every input, T5 style, e.g. "summarize: " or "translate English to German: ".
    source_prefix: str | None = None
    # Token limits for inputs and references (longer ones are truncated); None = data.max_length.
    max_source_length: int | None = bounded(None, ge=1)
    max_target_length: int = bounded(128, ge=1)
    # Generation (evaluation and the saved model's generation config): beam width and the
    # most tokens generated; max_new_tokens None = max_target_length.
    num_beams: int = bounded(4, ge=1)
    max_new_tokens: int | None = bounded(None, ge=1)


@dataclass
class TranslationOptions(Seq2SeqOptions):
    # Language keys: of the {"translation": {...}} dict, of flat columns, or of parallel files
    # named train.<lang>. Required for the nested layout.
    source_lang: str | None = None
    target_lang: str | None = None


class Seq2SeqTask(Task):
    auto_model = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    seq2seq = True
    greater_is_better = True

    def __init__(
        self,
        name: str,
        description: str,
        options: type,
        metric_kinds: tuple[str, ...],
        main_metric: str,
        sources: tuple[str, ...],
        targets: tuple[str, ...],
        pipeline_tag: str,
        headline_keys: tuple[str, ...],
    ):
        self.name = name
        self.family = name  # summarization and translation recipes are not interchangeable
        self.description = description
        self.Options = options
        self.metric_kinds = metric_kinds
        self.main_metric = main_metric
        self.source_candidates = sources
        self.target_candidates = targets
        self.pipeline_tag = pipeline_tag
        self.headline_keys = headline_keys
        self.translation = issubclass(options, TranslationOptions)

    # ---- config -------------------------------------------------------------------------------
    def validate(self, cfg: Any) -> list[str]:
        from llmtune.modeling import from_config_problems

        o, p = cfg.options, from_config_problems(cfg)
        for key in ("text_column", "text_pair_column", "label_column"):
            if getattr(cfg.data, key):
                p.append(
                    f"data.{key} is not used by {self.name}: name columns with options.source_column/target_column"
                )
        if self.translation and o.source_lang and o.source_lang == o.target_lang:
            p.append(f"options.source_lang and options.target_lang are both '{o.source_lang}': pick two languages")
        return p

    # ---- data ---------------------------------------------------------------------------------
    def load_data(self, ctx: RunContext) -> Any:
        from llmtune.data import arrange_splits, load_raw

        cfg = ctx.cfg
        if self.translation:
            pairs = find_parallel_files(cfg.data.dataset, cfg.options.source_lang, cfg.options.target_lang)
            if pairs:
                raw = load_parallel(pairs, *self._parallel_columns(cfg.options))
                return arrange_splits(raw, cfg.data, cfg.train.seed, ctx.training, source=str(cfg.data.dataset))
        raw = load_raw(cfg.data, seed=cfg.train.seed, carve_validation=ctx.training)
        if self.translation:
            raw = flatten_translation(raw, cfg.options.source_lang, cfg.options.target_lang)
        return raw

    @staticmethod
    def _parallel_columns(opts: Any) -> tuple[str, str]:
        return opts.source_lang or "source", opts.target_lang or "target"

    def _columns(self, ctx: RunContext, ds: Any) -> tuple[str, str]:
        from llmtune.data import pick_column

        opts = ctx.cfg.options
        sources, targets = self.source_candidates, self.target_candidates
        if self.translation:  # language-named columns first (en/de, or what parallel files became)
            sources = (*((opts.source_lang,) if opts.source_lang else ()), *sources)
            targets = (*((opts.target_lang,) if opts.target_lang else ()), *targets)
        src = pick_column(ds, opts.source_column, sources, "source", "options.source_column")
        tgt = pick_column(ds, opts.target_column, targets, "target", "options.target_column")
        if src == tgt:
            raise LlmtuneError(f"source and target are both column '{src}': set options.source_column/target_column")
        return src, tgt

    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        opts, tokenizer = ctx.cfg.options, ctx.tokenizer
        first = raw["train"] if "train" in raw else raw["validation"]
        src_col, tgt_col = self._columns(ctx, first)
        ctx.columns = {"source": src_col, "target": tgt_col}
        prefix = opts.source_prefix or ""
        max_source = sequence_limit(ctx, opts.max_source_length, cap=self.sequence_cap)
        max_target = sequence_limit(ctx, opts.max_target_length, cap=self.sequence_cap)

        def encode(batch: dict) -> dict:
            sources = [prefix + (s or "") for s in batch[src_col]]
            targets = [t or "" for t in batch[tgt_col]]
            enc = tokenizer(sources, max_length=max_source, truncation=True)
            enc["labels"] = tokenizer(text_target=targets, max_length=max_target, truncation=True)["input_ids"]
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        out = {}
        for split, ds in raw.items():
            require_content(ds, src_col, split, "source", "options.source_column")
            require_content(ds, tgt_col, split, "target", "options.target_column")
            out[split] = tokenize_split(ctx, ds, split, encode, required=(src_col, tgt_col))
        return out

    # ---- model --------------------------------------------------------------------------------
    def _configure_generation(self, ctx: RunContext, model: Any) -> None:
        """Store beams and length in the generation config: used in eval and by the saved model."""
        opts = ctx.cfg.options
        gen = model.generation_config
        gen.num_beams = opts.num_beams
        gen.max_new_tokens = opts.max_new_tokens or opts.max_target_length
        gen.max_length = None  # max_new_tokens decides; a stale max_length (e.g. 20) would cut first
        if opts.num_beams == 1:
            gen.early_stopping = False  # only meaningful for beam search; avoids a validation warning
        if model.config.decoder_start_token_id is None and gen.decoder_start_token_id is None:
            raise LlmtuneError(
                f"model '{ctx.model_path}' has no decoder_start_token_id: set it with "
                f"--set model.config_overrides.decoder_start_token_id=ID (T5: the pad id, BART: the eos id)"
            )

    def build_model(self, ctx: RunContext) -> Any:
        from llmtune.modeling import model_from_config

        m = ctx.cfg.model
        model = model_from_config(ctx, self.auto_model) if m.config and not m.name_or_path else super().build_model(ctx)
        self._configure_generation(ctx, model)
        return model

    def load_trained_model(self, ctx: RunContext) -> Any:
        model = super().load_trained_model(ctx)
        self._configure_generation(ctx, model)
        return model

    def collator(self, ctx: RunContext) -> Any:
        from transformers import DataCollatorForSeq2Seq

        # With the model, the collator also builds decoder_input_ids (labels shifted right).
        return DataCollatorForSeq2Seq(ctx.tokenizer, model=ctx.model, label_pad_token_id=-100)

    def training_args(self, ctx: RunContext) -> dict:
        # Generation during evaluation; max_new_tokens lives in the model's generation config
        # (Seq2SeqTrainer reads it when generation_max_length is unset).
        return {
            "predict_with_generate": True,
            "generation_num_beams": ctx.cfg.options.num_beams,
            "generation_max_length": None,
        }

    # ---- metrics and predictions --------------------------------------------------------------
    def _decode(self, ctx: RunContext, ids: Any) -> list[str]:
        import numpy as np

        ids = ids[0] if isinstance(ids, tuple) else ids
        ids = np.where(ids < 0, ctx.tokenizer.pad_token_id, ids)  # -100 padding from the eval loop
        texts = ctx.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        return [t.strip() for t in texts]

    def _scores(self, ctx: RunContext, preds: list[str], refs: list[str], pred_ids: Any) -> dict:
        import numpy as np

        from llmtune.metrics.generation import generation_metrics

        metrics = generation_metrics(preds, refs, self.metric_kinds)
        ids = pred_ids[0] if isinstance(pred_ids, tuple) else pred_ids
        pad = ctx.tokenizer.pad_token_id
        lengths = ((ids != pad) & (ids >= 0)).sum(-1) if len(ids) else np.zeros(1)
        metrics["gen_len"] = float(np.mean(lengths))
        return metrics

    def compute_metrics(self, ctx: RunContext) -> Any:
        # During training (checkpoint selection) references are the decoded tokenized labels;
        # final eval/test scores (predict) use the raw reference texts.
        def compute(eval_pred: Any) -> dict:
            preds = self._decode(ctx, eval_pred.predictions)
            refs = self._decode(ctx, eval_pred.label_ids)
            return self._scores(ctx, preds, refs, eval_pred.predictions)

        return compute

    def predict(self, ctx: RunContext, trainer: Any, raw_split: Any, split: Any) -> tuple[dict, list[dict]]:
        output = predict_outputs(trainer, split)  # scored below, against the raw reference texts
        preds = self._decode(ctx, output.predictions)
        src_col, tgt_col = ctx.columns["source"], ctx.columns["target"]
        sources = [s or "" for s in raw_split[src_col]]
        refs = [(t or "").strip() for t in raw_split[tgt_col]]
        metrics = dict(output.metrics)
        metrics.update({f"eval_{k}": v for k, v in self._scores(ctx, preds, refs, output.predictions).items()})
        records = [{"input": s, "reference": r, "prediction": p} for s, r, p in zip(sources, refs, preds, strict=True)]
        return metrics, records

    # ---- inference ----------------------------------------------------------------------------
    def prepare_inference(self, ctx: RunContext, columns: list[str]) -> None:
        from llmtune.data import pick_column

        opts = ctx.cfg.options
        sources = self.source_candidates
        if self.translation and opts.source_lang:
            sources = (opts.source_lang, *sources)
        # txt input and plain "text" rows: the text is the source
        sources = (*sources, "text") if "text" not in sources else sources
        ctx.columns = {"source": pick_column(columns, opts.source_column, sources, "source", "options.source_column")}

    def predict_batch(self, ctx: RunContext, rows: list[dict], settings: Any) -> list[dict]:
        from llmtune.inference.generation import generate_texts
        from llmtune.inference.predict import greedy_settings

        opts = ctx.cfg.options
        sources = [str(r.get(ctx.columns["source"]) or "") for r in rows]
        gen = settings.generation or greedy_settings(
            settings.max_new_tokens or ctx.model.generation_config.max_new_tokens or opts.max_target_length
        )
        limit = sequence_limit(ctx, opts.max_source_length, cap=self.sequence_cap)
        prompts = [(opts.source_prefix or "") + s for s in sources]
        run = generate_texts(
            ctx.model, ctx.tokenizer, prompts, gen, batch_size=len(prompts), add_special_tokens=True,
            max_input_tokens=limit,
        )  # fmt: skip
        return [{"input": s, "generated_text": g.text} for s, g in zip(sources, run.outputs, strict=True)]

    def headline(self, metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if k.split("_", 1)[-1] in self.headline_keys}


# ---------------------------------------------------------------------------------------------
# translation data layouts


def flatten_translation(raw: Any, source_lang: str | None, target_lang: str | None) -> Any:
    """Rows ``{"translation": {"en": ..., "de": ...}}`` -> flat ``en``/``de`` columns."""
    first = next(iter(raw.values()))
    names = list(getattr(first, "column_names", None) or first.features or [])
    if "translation" not in names:
        return raw
    feature = first.features["translation"] if first.features is not None else None
    languages = list(getattr(feature, "languages", None) or (feature.keys() if isinstance(feature, dict) else []))
    shown = ", ".join(languages) or "unknown"
    if not source_lang or not target_lang:
        raise LlmtuneError(
            f"the 'translation' column holds languages {shown}: set options.source_lang and options.target_lang "
            f"(e.g. --set options.source_lang=en --set options.target_lang=de)"
        )
    for key, lang in (("source_lang", source_lang), ("target_lang", target_lang)):
        if languages and lang not in languages:
            raise LlmtuneError(f"options.{key} '{lang}' is not in the 'translation' column (languages: {shown})")

    def split_pair(batch: dict) -> dict:
        pairs = batch["translation"]
        return {source_lang: [p.get(source_lang) for p in pairs], target_lang: [p.get(target_lang) for p in pairs]}

    def flat(ds: Any) -> Any:
        kept = [c for c in ds.column_names if c not in (source_lang, target_lang)] if ds.column_names else None
        return ds.map(split_pair, batched=True, remove_columns=kept)

    return type(raw)({split: flat(ds) for split, ds in raw.items()})


def _side(path: Path, source_lang: str | None, target_lang: str | None) -> str | None:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in PARALLEL_SIDES:
        return PARALLEL_SIDES[suffix]
    if source_lang and suffix == source_lang.lower():
        return "source"
    if target_lang and suffix == target_lang.lower():
        return "target"
    return None


def _counterpart(path: Path, side: str, source_lang: str | None, target_lang: str | None) -> Path | None:
    """The other file of a parallel pair: train.src -> train.tgt, train.en -> train.de."""
    wanted = "target" if side == "source" else "source"
    suffixes = [s for s, v in PARALLEL_SIDES.items() if v == wanted]
    lang = target_lang if wanted == "target" else source_lang
    if lang:
        suffixes.append(lang)
    for suffix in suffixes:
        other = path.with_suffix(f".{suffix}")
        if other.is_file():
            return other
    return None


def find_parallel_files(
    spec: str | None, source_lang: str | None, target_lang: str | None
) -> dict[str, tuple[Path, Path]] | None:
    """Split -> (source file, target file) when ``spec`` names parallel text files, else None."""
    from llmtune.data import SPLIT_ALIASES, split_files
    from llmtune.paths import resolve_location

    if not spec:
        return None
    if "," in spec:  # an explicit pair: SRC,TGT
        parts = [Path(p.strip()).expanduser() for p in spec.split(",")]
        if len(parts) != 2:
            raise LlmtuneError(f"--dataset {spec!r}: a parallel pair is two files, SOURCE,TARGET")
        for p in parts:
            if not p.is_file():
                raise LlmtuneError(f"parallel text file not found: {p} (from --dataset {spec})")
        return {"train": (parts[0], parts[1])}
    path = Path(resolve_location(spec)).expanduser()
    if path.is_file():
        side = _side(path, source_lang, target_lang)
        if side is None:
            return None
        other = _counterpart(path, side, source_lang, target_lang)
        if other is None:
            raise LlmtuneError(
                f"no counterpart for parallel text file {path}: expected {path.with_suffix('.tgt' if side == 'source' else '.src')}"
                + (
                    f" or {path.with_suffix('.' + (target_lang if side == 'source' else source_lang))}"
                    if target_lang and source_lang
                    else ""
                )
                + " beside it, or pass both files as --dataset SOURCE,TARGET"
            )
        src, tgt = (path, other) if side == "source" else (other, path)
        return {"train": (src, tgt)}
    if not path.is_dir() or split_files(path):  # a folder of csv/jsonl/... files is not parallel text
        return None
    found: dict[str, dict[str, Path]] = {}
    for file in sorted(path.iterdir()):
        split = SPLIT_ALIASES.get(file.name.split(".")[0].lower()) if file.is_file() else None
        side = _side(file, source_lang, target_lang) if split else None
        if split and side:
            found.setdefault(split, {})[side] = file
    if not found:
        return None
    pairs = {}
    for split, sides in found.items():
        if len(sides) != 2:
            (_, only_file), missing = next(iter(sides.items())), "target" if "source" in sides else "source"
            raise LlmtuneError(
                f"parallel text file {only_file} has no {missing} counterpart in {path} "
                f"(name pairs like {split}.src/{split}.tgt or {split}.<source_lang>/{split}.<target_lang>)"
            )
        pairs[split] = (sides["source"], sides["target"])
    return pairs


def load_parallel(pairs: dict[str, tuple[Path, Path]], source_col: str, target_col: str) -> Any:
    """Read line-aligned text files into a ``DatasetDict`` with ``source_col``/``target_col``.

    Each side is read with the ``datasets`` text builder (Arrow cache, no full copy in memory)
    and the two are joined column-wise; pairs with an empty side are dropped.
    """
    from datasets import DatasetDict, Features, Value, concatenate_datasets, load_dataset

    from llmtune.data import diagnose_file

    out = {}
    for split, (src, tgt) in pairs.items():
        sides = []
        for path, col in ((src, source_col), (tgt, target_col)):
            if not path.exists():
                raise LlmtuneError(f"parallel text file not found: {path}")
            if path.stat().st_size == 0:
                raise LlmtuneError(f"parallel text file {path} is empty: it needs one sentence per line")
            try:
                ds = load_dataset(
                    "text", data_files={split: [str(path)]}, split=split, features=Features({col: Value("string")})
                )
            except Exception as exc:  # datasets wraps decode errors in DatasetGenerationError
                reason = diagnose_file(path)
                if reason:
                    raise LlmtuneError(f"parallel text file {path}: {reason}") from exc
                cause = exc.__cause__ or exc
                raise LlmtuneError(f"could not read parallel text file {path}: {one_line(cause)}") from exc
            sides.append(ds)
        if len(sides[0]) != len(sides[1]):
            raise LlmtuneError(
                f"parallel text files are not aligned: {src} has {len(sides[0])} lines, {tgt} has {len(sides[1])}"
            )
        joined = concatenate_datasets(sides, axis=1)
        out[split] = joined.filter(
            lambda b: [bool(s.strip()) and bool(t.strip()) for s, t in zip(b[source_col], b[target_col], strict=True)],
            batched=True,
            desc=f"dropping empty pairs ({split})",
        )
    return DatasetDict(out)


TASKS = [
    Seq2SeqTask(
        "summarization",
        "abstractive summarization with an encoder-decoder model (T5, BART, Pegasus); ROUGE",
        Seq2SeqOptions,
        metric_kinds=("rouge",),
        main_metric="rougeL",
        sources=SUMMARY_SOURCES,
        targets=SUMMARY_TARGETS,
        pipeline_tag="summarization",
        headline_keys=("loss", "rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len"),
    ),
    Seq2SeqTask(
        "translation",
        "machine translation with an encoder-decoder model (T5, MarianMT, BART); sacreBLEU and chrF",
        TranslationOptions,
        metric_kinds=("bleu",),
        main_metric="bleu",
        sources=TRANSLATION_SOURCES,
        targets=TRANSLATION_TARGETS,
        pipeline_tag="translation",
        headline_keys=("loss", "bleu", "chrf", "gen_len"),
    ),
]
