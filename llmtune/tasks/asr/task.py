"""The ``asr`` task: hooks for CTC and encoder-decoder (Whisper) speech recognition models, and their
helpers (see :mod:`llmtune.tasks.asr`). Module level stays torch-free.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.metrics.asr import NORMALIZERS
from llmtune.tasks.base import RunContext, Task, predict_outputs

AUDIO_COLUMNS = ("audio", "file_name", "file", "path", "audio_path", "audio_file", "filename", "wav")
TEXT_COLUMNS = ("transcription", "text", "sentence", "transcript", "normalized_text", "raw_transcription")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
WHISPER_TASKS = ("transcribe", "translate")
# Special tokens of a vocabulary built from the data: CTC blank (= padding), unknown, word delimiter.
PAD, UNK, DELIMITER = "<pad>", "<unk>", "|"
# Rows per batched decoding map call: bounds the memory held by decoded audio.
MAP_BATCH = 32


@dataclass
class AsrOptions:
    # Column holding the audio (file paths or a Hub Audio feature); None = auto-detect
    # (audio, file_name, file, path, ...). Transcriptions: data.text_column (auto: transcription,
    # text, sentence, ...).
    audio_column: str | None = None
    # From scratch: the model's sample rate; None = that of the first training clip, at least 16 kHz
    # for wav2vec2-bert (see scratch_rate). A pretrained feature extractor keeps its own rate
    # (every clip is resampled to it).
    sampling_rate: int | None = None
    # Text normalisation before WER/CER: none | lower | basic (lowercase, no punctuation).
    normalize: str = "basic"
    # CTC targets: lowercase transcriptions first; None = yes when the vocabulary is built from
    # the data, no with a tokenizer that ships with the model.
    lowercase: bool | None = None
    # Characters removed from transcriptions before training (e.g. ",?.!;:"), as in the
    # transformers CTC example's --chars_to_ignore.
    chars_to_ignore: str = ""
    # Clips shorter / longer than these (seconds) are dropped and counted (None: no upper bound
    # but the model's own limit).
    min_duration_s: float = 0.0
    max_duration_s: float | None = None
    # Extra training copies of every clip at these speeds (e.g. [0.9, 1.1]), Kaldi-style speed
    # perturbation: pitch and tempo change together, which helps on unseen speakers.
    speed_perturbation: list[float] = field(default_factory=list)
    # wav2vec2-style models: keep the convolutional waveform encoder fixed.
    freeze_feature_encoder: bool = False
    # SpecAugment, LayerDrop and CTC settings written into the model config; None keeps the
    # model config's value.
    mask_time_prob: float | None = None
    mask_time_length: int | None = None
    mask_feature_prob: float | None = None
    mask_feature_length: int | None = None
    layerdrop: float | None = None
    ctc_zero_infinity: bool = True
    # Encoder-decoder models: language of the transcriptions (e.g. en, or english) and task.
    language: str | None = None
    whisper_task: str = "transcribe"
    # Generation (encoder-decoder evaluation and the saved generation config).
    num_beams: int = 1
    max_new_tokens: int = 128


class AsrTask(Task):
    name = "asr"
    aliases = ("speech-recognition", "automatic-speech-recognition")
    family = "asr"
    description = "speech recognition: CTC (wav2vec2, from scratch) or encoder-decoder (Whisper) models, WER/CER"
    Options = AsrOptions
    auto_model = "AutoModelForCTC"
    main_metric = "wer"
    greater_is_better = False
    # Seq2SeqTrainer: generation for encoder-decoder models (a plain Trainer otherwise).
    seq2seq = True
    pipeline_tag = "automatic-speech-recognition"

    # ---- config time (torch-free) -------------------------------------------------------
    def apply_defaults(self, cfg: Any, tree: dict) -> None:
        train_keys = tree.get("train") or {}
        if "learning_rate" not in train_keys and cfg.model.config and not cfg.model.name_or_path:
            cfg.train.learning_rate = 1e-3  # random initialisation wants a larger step

    def validate(self, cfg: Any) -> list[str]:
        from llmtune.presets import get_preset, near_preset, preset_names

        o, m, p = cfg.options, cfg.model, []
        if m.config and m.name_or_path:
            p.append("set model.name_or_path (--model, pretrained) or model.config (a speech preset), not both")
        if m.config:
            typo = near_preset(m.config)
            if typo:
                p.append(f"unknown preset '{m.config}' (model.config); did you mean '{typo}'?")
            preset = get_preset(m.config)
            if preset is not None and preset["model_type"] not in SCRATCH_TYPES:
                speech = [n for n in preset_names() if get_preset(n)["model_type"] in SCRATCH_TYPES]
                p.append(f"preset '{m.config}' is not a speech model: pick one of {', '.join(speech)}")
        if o.normalize not in NORMALIZERS:
            p.append(f"options.normalize must be one of {', '.join(NORMALIZERS)}, got {o.normalize!r}")
        if o.sampling_rate is not None and not 1000 <= o.sampling_rate <= 192_000:
            p.append(f"options.sampling_rate must be a rate in Hz (1000..192000), got {o.sampling_rate}")
        if o.min_duration_s < 0:
            p.append(f"options.min_duration_s must be >= 0, got {o.min_duration_s}")
        if o.max_duration_s is not None and o.max_duration_s <= o.min_duration_s:
            p.append(
                f"options.max_duration_s ({o.max_duration_s}) must exceed options.min_duration_s ({o.min_duration_s})"
            )
        for factor in o.speed_perturbation:
            if not isinstance(factor, (int, float)) or not 0.5 <= factor <= 2.0 or factor == 1.0:
                p.append(f"options.speed_perturbation factors must be between 0.5 and 2 and not 1, got {factor!r}")
        for key in ("mask_time_prob", "mask_feature_prob", "layerdrop"):
            value = getattr(o, key)
            if value is not None and not 0 <= value < 1:
                p.append(f"options.{key} must be in [0, 1), got {value}")
        for key in ("mask_time_length", "mask_feature_length"):
            value = getattr(o, key)
            if value is not None and value < 1:
                p.append(f"options.{key} must be >= 1, got {value}")
        if o.whisper_task not in WHISPER_TASKS:
            p.append(f"options.whisper_task must be transcribe or translate, got {o.whisper_task!r}")
        if o.num_beams < 1:
            p.append(f"options.num_beams must be >= 1, got {o.num_beams}")
        if o.max_new_tokens < 1:
            p.append(f"options.max_new_tokens must be >= 1, got {o.max_new_tokens}")
        for key in ("text_pair_column", "label_column"):
            if getattr(cfg.data, key):
                p.append(
                    f"data.{key} is not used by asr: name the transcription with data.text_column and the audio "
                    f"with options.audio_column"
                )
        return p

    # ---- model family, processor --------------------------------------------------------
    def _model_config(self, ctx: RunContext) -> Any:
        from transformers import AutoConfig

        from llmtune.modeling import _hub_error, model_architecture, model_location

        m = ctx.cfg.model
        if ctx.training and m.config:
            return model_architecture(m)
        spec = ctx.model_path if not ctx.training else m.name_or_path
        if not spec:
            raise LlmtuneError(
                "no model given: pass --model (a wav2vec2/Whisper Hub id or folder) or --set model.config=ctc-small "
                "(from scratch)"
            )
        try:
            return AutoConfig.from_pretrained(model_location(spec), trust_remote_code=m.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise _hub_error("model", spec, exc) from exc

    def load_tokenizer(self, ctx: RunContext, **kwargs: Any) -> Any:
        """Decide the family and load what the model ships (processor, or feature extractor and
        tokenizer); anything missing is built from the data in :meth:`prepare`. Returns the
        processor when complete, else None (``ctx.tokenizer`` is set by ``prepare``)."""
        config = self._model_config(ctx)
        family = model_family(config)
        ctx.state.update(family=family, model_type=config.model_type, model_config=config)
        m = ctx.cfg.model
        scratch = ctx.training and bool(m.config)
        source = None if scratch else (m.name_or_path if ctx.training else ctx.model_path)
        tok_source = m.tokenizer if ctx.training and m.tokenizer else source
        feature_extractor = _load_feature_extractor(source) if source else None
        tokenizer = (
            _load_tokenizer(tok_source, required=family == "seq2seq" or not ctx.training) if tok_source else None
        )
        if family == "seq2seq":
            if scratch:
                raise LlmtuneError(
                    f"model.config '{m.config}' is an encoder-decoder ({config.model_type}): from scratch llmtune "
                    f"builds CTC models only; pass --model with a pretrained Whisper/Speech2Text model"
                )
            if feature_extractor is None:
                raise LlmtuneError(f"model '{source}' has no feature extractor (preprocessor_config.json)")
            self._set_prefix(ctx, tokenizer)
        elif not ctx.training and feature_extractor is None:
            raise LlmtuneError(f"model folder {source} has no feature extractor (preprocessor_config.json)")
        ctx.state["feature_extractor"] = feature_extractor
        ctx.state["text_tokenizer"] = tokenizer
        if feature_extractor is not None and tokenizer is not None:
            return make_processor(feature_extractor, tokenizer)
        return None

    def _set_prefix(self, ctx: RunContext, tokenizer: Any) -> None:
        """Whisper: ``<|startoftranscript|><|lang|><|task|><|notimestamps|>`` on every label."""
        o = ctx.cfg.options
        if hasattr(tokenizer, "set_prefix_tokens"):
            try:
                tokenizer.set_prefix_tokens(language=o.language, task=o.whisper_task, predict_timestamps=False)
            except ValueError as exc:
                raise LlmtuneError(f"options.language / options.whisper_task: {exc}") from exc
        elif o.language:
            raise LlmtuneError(
                f"options.language is set but {type(tokenizer).__name__} takes no language prefix: remove it"
            )

    # ---- data -----------------------------------------------------------------------------
    def load_data(self, ctx: RunContext) -> Any:
        from llmtune.data import arrange_splits, column_names, load_raw, pick_column
        from llmtune.paths import resolve_location

        cfg = ctx.cfg
        spec = cfg.data.dataset
        if not spec:
            raise LlmtuneError("no dataset given: pass --dataset (an audio folder with metadata.csv, a csv/jsonl file)")
        path = Path(resolve_location(spec)).expanduser()
        folders = audiofolder_splits(path) if path.is_dir() else None
        if folders:
            raw = load_metadata(folders, cfg.data.streaming)
            raw = arrange_splits(raw, cfg.data, cfg.train.seed, ctx.training, source=spec)
            bases = {split: folders[_source_split(split, cfg.data, folders)].parent for split in raw}
        else:
            raw = load_raw(cfg.data, seed=cfg.train.seed, carve_validation=ctx.training)
            local = path.exists()
            bases = dict.fromkeys(raw, (path if path.is_dir() else path.parent) if local else None)
        first = raw["train"] if "train" in raw else next(iter(raw.values()))
        audio_col = pick_column(first, cfg.options.audio_column, AUDIO_COLUMNS, "audio", "options.audio_column")
        ctx.state["audio_column"] = audio_col
        out = {}
        for split, ds in raw.items():
            if audio_col not in column_names(ds):
                raise LlmtuneError(f"split '{split}' has no audio column '{audio_col}'; columns: {column_names(ds)}")
            out[split] = absolute_audio(ds, audio_col, bases.get(split))
        return type(raw)(out)

    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        from llmtune.data import column_names, pick_column

        cfg, o = ctx.cfg, ctx.cfg.options
        first = raw["train"] if "train" in raw else raw["validation"]
        audio_col = ctx.state["audio_column"]
        text_col = pick_column(first, cfg.data.text_column, TEXT_COLUMNS, "transcription", "data.text_column")
        ctx.columns = {"audio": audio_col, "transcription": text_col}
        family = ctx.state["family"]
        streaming = _is_streaming(first)

        fe = ctx.state["feature_extractor"]
        if fe is None:  # from scratch: a feature extractor for the data's sample rate
            rate = o.sampling_rate or scratch_rate(ctx.state["model_type"], _first_rate(first, audio_col))
            fe = build_feature_extractor(ctx.state["model_type"], rate)
            ctx.state["feature_extractor"] = fe
        elif o.sampling_rate and o.sampling_rate != fe.sampling_rate:
            raise LlmtuneError(
                f"options.sampling_rate {o.sampling_rate} differs from the model's feature extractor "
                f"({fe.sampling_rate} Hz): drop it, clips are resampled to {fe.sampling_rate} Hz"
            )
        rate = int(fe.sampling_rate)
        tok = ctx.state["text_tokenizer"]
        built_vocab = tok is None
        lowercase = o.lowercase if o.lowercase is not None else built_vocab
        if family == "ctc":
            ctx.state["text_transform"] = TargetText(o.chars_to_ignore, lowercase)
            if built_vocab:
                texts = _all_texts(raw, text_col)
                tok = build_ctc_tokenizer(texts, ctx.state["text_transform"])
                ctx.state["text_tokenizer"] = tok
            else:
                ctx.state["text_transform"].fit_case(tok)
        ctx.tokenizer = make_processor(fe, tok)
        ctx.state["sampling_rate"] = rate
        ctx.state["vocab_built"] = built_vocab
        limit_s = model_max_seconds(fe, ctx.state["model_config"])
        encoder = ClipEncoder(
            fe, tok, family, text_col, audio_col, o, limit_s, ctx.state.get("text_transform"),
            max_label_tokens=getattr(ctx.state["model_config"], "max_target_positions", None),
        )  # fmt: skip
        out, dropped = {}, {}
        for split, ds in raw.items():
            for col in (audio_col, text_col):
                if col not in column_names(ds):
                    raise LlmtuneError(f"split '{split}' has no column '{col}'; columns: {', '.join(column_names(ds))}")
            speeds = list(o.speed_perturbation) if split == "train" and ctx.training else []
            encoded = _map(
                ds,
                lambda batch, _s=split, _sp=speeds: encoder(batch, _s, _sp),
                batched=True,
                batch_size=MAP_BATCH,
                remove_columns=column_names(ds),
                num_proc=cfg.data.num_proc,
                desc=f"decoding audio of {split}",
            )
            if streaming:
                encoded = encoded.filter(lambda reason: reason == "", input_columns="drop_reason")
            else:
                counts = Counter(encoded["drop_reason"])
                counts.pop("", None)
                if counts:
                    dropped[split] = dict(counts)
                    encoded = encoded.filter(lambda reason: reason == "", input_columns="drop_reason")
                if len(encoded) == 0:
                    raise LlmtuneError(
                        f"split '{split}': every clip was dropped by the duration filters ({_dropped_text(counts)}); "
                        f"widen options.min_duration_s / options.max_duration_s"
                    )
            out[split] = encoded.remove_columns(["drop_reason"])
            if split == "train" and streaming:
                out[split] = out[split].shuffle(seed=cfg.train.seed, buffer_size=cfg.data.shuffle_buffer_size)
        ctx.state["dropped"] = dropped
        if dropped:
            from llmtune.console import echo

            for split, counts in dropped.items():
                echo(f"llmtune: split '{split}': dropped {_dropped_text(counts)}")
        return out

    # ---- model --------------------------------------------------------------------------------
    def _knobs(self, ctx: RunContext, config: Any) -> dict:
        o = ctx.cfg.options
        knobs: dict[str, Any] = {}
        for key in ("mask_time_prob", "mask_time_length", "mask_feature_prob", "mask_feature_length", "layerdrop"):
            value = getattr(o, key)
            if value is not None:
                if not hasattr(config, key):
                    raise LlmtuneError(f"options.{key}: the {config.model_type} config has no {key}: remove it")
                knobs[key] = value
        if (o.mask_time_prob or o.mask_feature_prob) and hasattr(config, "apply_spec_augment"):
            knobs["apply_spec_augment"] = True  # Whisper ships with SpecAugment off
        if ctx.state["family"] == "ctc":
            tok = ctx.state["text_tokenizer"]
            knobs.update(
                ctc_loss_reduction="mean",
                ctc_zero_infinity=o.ctc_zero_infinity,
                vocab_size=len(tok),
                pad_token_id=tok.pad_token_id,
            )
        return knobs

    def build_model(self, ctx: RunContext) -> Any:
        import torch
        import transformers

        from llmtune.modeling import load_model

        config = ctx.state["model_config"]
        family = ctx.state["family"]
        if ctx.cfg.model.config:
            fe = ctx.state["feature_extractor"]
            for key, value in self._knobs(ctx, config).items():
                setattr(config, key, value)
            if config.model_type == "wav2vec2-bert":
                config.feature_projection_input_dim = fe.feature_size * fe.stride
            model = transformers.AutoModelForCTC.from_config(config, dtype=torch.float32)
        else:
            auto = "AutoModelForCTC" if family == "ctc" else "AutoModelForSpeechSeq2Seq"
            extra = {"ignore_mismatched_sizes": True} if family == "ctc" else {}
            model = load_model(ctx, auto, **self._knobs(ctx, config), **extra)
        if ctx.cfg.options.freeze_feature_encoder:
            freeze_feature_encoder(model)
        if family == "seq2seq":
            self._configure_generation(ctx, model)
        return model

    def load_trained_model(self, ctx: RunContext) -> Any:
        from llmtune.modeling import load_model

        family = ctx.state["family"]
        model = load_model(ctx, "AutoModelForCTC" if family == "ctc" else "AutoModelForSpeechSeq2Seq")
        if family == "seq2seq":
            self._configure_generation(ctx, model)
        return model

    def _configure_generation(self, ctx: RunContext, model: Any) -> None:
        o = ctx.cfg.options
        gen = model.generation_config
        gen.num_beams = o.num_beams
        gen.max_new_tokens = o.max_new_tokens
        gen.max_length = None
        if o.num_beams == 1:
            gen.early_stopping = False
        if hasattr(gen, "lang_to_id") or model.config.model_type == "whisper":
            # Whisper: language and task go through the generation config (not forced ids), and
            # no timestamps: the labels carry <|notimestamps|>.
            if o.language:
                gen.language = o.language
            gen.task = o.whisper_task
            gen.forced_decoder_ids = None
            gen.return_timestamps = False
            model.config.forced_decoder_ids = None
        if model.config.decoder_start_token_id is None and gen.decoder_start_token_id is None:
            raise LlmtuneError(f"model '{ctx.model_path}' has no decoder_start_token_id: it cannot generate")

    def finalize_model(self, ctx: RunContext, model: Any) -> None:
        model.config.llmtune_sampling_rate = ctx.state.get("sampling_rate")

    def collator(self, ctx: RunContext) -> Any:
        fe = ctx.state["feature_extractor"]
        start = None
        if ctx.state["family"] == "seq2seq":
            start = getattr(ctx.model.config, "decoder_start_token_id", None)
        return SpeechCollator(fe, ctx.state["text_tokenizer"], input_name(fe), start)

    def training_args(self, ctx: RunContext) -> dict:
        args: dict[str, Any] = {}
        if ctx.cfg.train.metric_for_best_model is None:
            args.update(metric_for_best_model="wer", greater_is_better=False)
        if ctx.state["family"] == "seq2seq":
            args.update(predict_with_generate=True, generation_num_beams=ctx.cfg.options.num_beams)
            args["generation_max_length"] = None
        return args

    def eval_step(self, ctx: RunContext) -> Any:
        """CTC: keep greedy ids per frame (not the logits), frames past each clip's end set to -100
        (padding, never decoded). Encoder-decoder models use the Trainer's generation step."""
        if ctx.state["family"] != "ctc":
            return None

        def step(model: Any, inputs: dict) -> tuple:
            out = model(**inputs)
            return out.loss, ctc_frame_ids(model, inputs, out.logits), inputs.get("labels")

        return step

    # ---- metrics, predictions ---------------------------------------------------------------
    def decode(self, ctx: RunContext, ids: Any, references: bool = False) -> list[str]:
        import numpy as np

        tok = ctx.state["text_tokenizer"]
        ids = ids[0] if isinstance(ids, tuple) else ids
        fill = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = np.where(np.asarray(ids) < 0, fill, ids)
        if ctx.state["family"] == "ctc":
            # Labels are plain character ids (a doubled letter is two ids), not CTC frames.
            texts = tok.batch_decode(ids, group_tokens=not references)
        else:
            texts = tok.batch_decode(ids, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def compute_metrics(self, ctx: RunContext) -> Any:
        from llmtune.metrics.asr import error_rates

        normalize = ctx.cfg.options.normalize

        def compute(eval_pred: Any) -> dict:
            hyps = self.decode(ctx, eval_pred.predictions)
            refs = self.decode(ctx, eval_pred.label_ids, references=True)
            return error_rates(refs, hyps, normalize)

        return compute

    def predict(self, ctx: RunContext, trainer: Any, raw_split: Any, split: Any) -> tuple[dict, list[dict]]:
        from llmtune.metrics.asr import error_rates, utterance_wer

        output = predict_outputs(trainer, split)  # scored below against the raw transcriptions
        hyps = self.decode(ctx, output.predictions)
        rows = split.select_columns(["audio_path", "reference"])
        paths, refs = [], []
        for row in rows:
            paths.append(row["audio_path"])
            refs.append(row["reference"])
        if len(hyps) > len(refs) and trainer.args.world_size > 1:
            # Sharded evaluation pads the last batches with clips from the start of the split
            # (accelerate's even batches); gathered in order they come after every real clip.
            # accelerate drops them itself when it knows the remainder, which it did not for the
            # CTC frame ids here: drop them the same way.
            hyps = hyps[: len(refs)]
        if len(refs) != len(hyps):  # pragma: no cover - a streamed split that changed under us
            raise LlmtuneError(f"{len(hyps)} transcripts for {len(refs)} clips: the split changed during evaluation")
        normalize = ctx.cfg.options.normalize
        metrics = dict(output.metrics)
        metrics.update({f"eval_{k}": v for k, v in error_rates(refs, hyps, normalize).items()})
        records = [
            {"audio": p, "reference": r, "hypothesis": h, "wer": round(utterance_wer(r, h, normalize), 6)}
            for p, r, h in zip(paths, refs, hyps, strict=True)
        ]
        return metrics, records

    def headline(self, metrics: dict) -> dict:
        keep = ("loss", "wer", "cer", "words", "runtime")
        return {k: v for k, v in metrics.items() if k.split("_", 1)[-1] in keep}

    def card_lines(self, ctx: RunContext) -> list[str]:
        tok = ctx.state.get("text_tokenizer")
        lines = [f"- **Sample rate:** {ctx.state.get('sampling_rate')} Hz (audio is resampled to it, mixed to mono)"]
        if ctx.state.get("family") == "ctc" and tok is not None:
            vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
            shown = " ".join(f"`{t}`" for t, _ in vocab)
            lines.append(f"- **Vocabulary:** {len(vocab)} CTC tokens ({PAD} = blank, {DELIMITER} = space): {shown}")
        elif tok is not None:
            lines.append(f"- **Vocabulary:** {type(tok).__name__}, {len(tok)} tokens")
        lines.append(f"- **Scoring:** WER/CER after `{ctx.cfg.options.normalize}` normalisation")
        if ctx.state.get("dropped"):
            lines.append(
                "- **Dropped clips:** " + "; ".join(f"{s}: {_dropped_text(c)}" for s, c in ctx.state["dropped"].items())
            )
        return lines

    # ---- inference (reused by prediction commands) ------------------------------------------
    # ---- llmtune predict -------------------------------------------------------------------
    def prepare_inference(self, ctx: RunContext, columns: list[str]) -> None:
        from llmtune.data import pick_column

        # a txt input is one audio path per line (column "text")
        candidates = (*AUDIO_COLUMNS, "text")
        col = pick_column(columns, ctx.cfg.options.audio_column, candidates, "audio", "options.audio_column")
        ctx.columns = {"audio": col}

    def input_length(self, ctx: RunContext, row: dict) -> int:
        return 0  # clip lengths are unknown before decoding: keep the input order

    def predict_batch(self, ctx: RunContext, rows: list[dict], settings: Any) -> list[dict]:
        """One transcript per audio path (relative paths are read from the working directory)."""
        col = ctx.columns["audio"]
        sources = [r.get(col) for r in rows]
        for i, source in enumerate(sources):
            if not source:
                raise LlmtuneError(f"row {i + 1} of the input has no audio in column '{col}'")
        texts = self.transcribe(ctx, sources, batch_size=max(1, settings.batch_size))
        return [{"audio": str(s), "transcript": t} for s, t in zip(sources, texts, strict=True)]

    def transcribe(self, ctx: RunContext, sources: list[Any], batch_size: int = 8) -> list[str]:
        """Transcripts for audio files, bytes, ``{"array", "sampling_rate"}`` dicts or (array, rate)
        pairs, with a model loaded by ``load_tokenizer`` + ``load_trained_model`` (or trained)."""
        import torch

        from llmtune.audio import load_audio

        fe, model = ctx.state["feature_extractor"], ctx.model
        rate, name = int(fe.sampling_rate), input_name(fe)
        device = next(model.parameters()).device
        texts: list[str] = []
        model.eval()
        for start in range(0, len(sources), batch_size):
            clips = [load_audio(s, rate)[0] for s in sources[start : start + batch_size]]
            feats = fe(clips, sampling_rate=rate, return_tensors="pt", padding=True, **_mask_kwargs(fe))
            inputs = {k: v.to(device) for k, v in feats.items() if k in (name, "attention_mask")}
            with torch.no_grad():
                if ctx.state["family"] == "ctc":
                    logits = model(**inputs).logits
                    ids = ctc_frame_ids(model, inputs, logits)
                else:
                    ids = model.generate(**inputs)
            texts.extend(self.decode(ctx, ids.cpu().numpy()))
        return texts


# Model types a size preset / config.json may name for training from scratch (CTC).
SCRATCH_TYPES = ("wav2vec2-bert", "wav2vec2", "wav2vec2-conformer", "hubert", "wavlm")


# =============================================================================================
# helpers (module functions so tests, benchmarks and other commands can call them directly)


def model_family(config: Any) -> str:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CTC_MAPPING_NAMES,
        MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
    )

    if config.model_type in MODEL_FOR_CTC_MAPPING_NAMES:
        return "ctc"
    if config.model_type in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
        return "seq2seq"
    raise LlmtuneError(
        f"model type '{config.model_type}' is not a speech recognition model: use a CTC model (wav2vec2, HuBERT, "
        f"WavLM, Wav2Vec2-BERT...) or an encoder-decoder one (Whisper, Speech2Text...)"
    )


def _load_feature_extractor(spec: str) -> Any:
    from transformers import AutoFeatureExtractor

    from llmtune.modeling import _hub_error, model_location

    try:
        return AutoFeatureExtractor.from_pretrained(model_location(spec))
    except (OSError, ValueError) as exc:
        if "preprocessor_config" in str(exc) or "feature extractor" in str(exc).lower():
            return None
        raise _hub_error("feature extractor", spec, exc) from exc


def _load_tokenizer(spec: str, required: bool) -> Any:
    """The model's tokenizer, or None when it ships none (a vocabulary is then built from data)."""
    from transformers import AutoTokenizer

    from llmtune.modeling import _hub_error, model_location

    try:
        return AutoTokenizer.from_pretrained(model_location(spec))
    except Exception as exc:  # a wav2vec2 pretraining checkpoint has no vocab.json: TypeError/OSError
        if required:
            raise _hub_error("tokenizer", spec, exc) from exc
        return None


def make_processor(feature_extractor: Any, tokenizer: Any) -> Any:
    """A processor bundling both (saved with the model; ``pipeline`` loads its parts)."""
    import transformers

    name = type(feature_extractor).__name__
    for cls_name in PROCESSORS.get(name, ()):
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            continue
        try:
            return cls(feature_extractor=feature_extractor, tokenizer=tokenizer)
        except (TypeError, ValueError):
            continue
    raise LlmtuneError(f"no processor pairs {name} with {type(tokenizer).__name__}")


PROCESSORS = {
    "SeamlessM4TFeatureExtractor": ("Wav2Vec2BertProcessor",),
    "Wav2Vec2FeatureExtractor": ("Wav2Vec2Processor",),
    "WhisperFeatureExtractor": ("WhisperProcessor",),
    "Speech2TextFeatureExtractor": ("Speech2TextProcessor",),
}


def input_name(feature_extractor: Any) -> str:
    names = getattr(feature_extractor, "model_input_names", None) or ["input_values"]
    return names[0]


def _mask_kwargs(fe: Any) -> dict:
    return {"return_attention_mask": bool(getattr(fe, "return_attention_mask", False))}


def scratch_rate(model_type: str, data_rate: int) -> int:
    """The feature extractor's rate for a model trained from scratch on audio at ``data_rate``.

    The log-mel frames of ``wav2vec2-bert`` are fixed in samples (25 ms every 10 ms at 16 kHz, two
    stacked per model step), so audio below 16 kHz is resampled up to 16 kHz: at 8 kHz a model step
    would last 40 ms, and a short word such as "three" would get too few steps for CTC to spell it
    with its blanks (FSDD, unseen speaker: 34 % WER with 40 ms steps; BENCHMARKS.md). Stacking one
    frame instead is no way out: transformers' SeamlessM4TFeatureExtractor returns an empty
    attention mask for stride=1, which breaks ``pipeline()`` on the saved model. An explicit
    ``options.sampling_rate`` is used as given.
    """
    return max(data_rate, 16000) if model_type == "wav2vec2-bert" else data_rate


def build_feature_extractor(model_type: str, sampling_rate: int) -> Any:
    """A feature extractor for a model trained from scratch at ``sampling_rate``."""
    if model_type == "wav2vec2-bert":
        from transformers import SeamlessM4TFeatureExtractor

        # 80 log-mel filterbanks every 160 samples (10 ms at 16 kHz), normalised per utterance and
        # mel bin, two frames stacked per model step (see scratch_rate for lower rates).
        return SeamlessM4TFeatureExtractor(sampling_rate=sampling_rate, num_mel_bins=80, stride=2)
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(sampling_rate=sampling_rate, do_normalize=True, return_attention_mask=True)


def model_max_seconds(feature_extractor: Any, config: Any) -> float | None:
    """The longest clip the model takes (Whisper: its 30 s window); None when unbounded."""
    chunk = getattr(feature_extractor, "chunk_length", None)
    if chunk and type(feature_extractor).__name__ == "WhisperFeatureExtractor":
        return float(chunk)
    return None


class TargetText:
    """What a CTC model is trained to output: the transcription after ``chars_to_ignore`` and
    lowercasing (or uppercasing, for a shipped vocabulary without lowercase letters)."""

    def __init__(self, chars_to_ignore: str, lowercase: bool):
        self.ignore = {ord(c): None for c in chars_to_ignore}
        self.lowercase = lowercase
        self.uppercase = False

    def fit_case(self, tokenizer: Any) -> None:
        letters = [t for t in tokenizer.get_vocab() if len(t) == 1 and t.isalpha()]
        if letters and not any(t.islower() for t in letters) and any(t.isupper() for t in letters):
            self.uppercase, self.lowercase = True, False

    def __call__(self, text: str) -> str:
        text = " ".join(str(text).translate(self.ignore).split())
        if self.uppercase:
            return text.upper()
        return text.lower() if self.lowercase else text


def build_ctc_tokenizer(texts: list[str], transform: TargetText) -> Any:
    """A ``Wav2Vec2CTCTokenizer`` over every character of ``texts`` (after ``transform``)."""
    from transformers import Wav2Vec2CTCTokenizer

    chars = sorted({ch for t in texts for ch in transform(t or "")} - {" "})
    vocab = {PAD: 0, UNK: 1, DELIMITER: 2}
    for ch in chars:
        if ch not in vocab:
            vocab[ch] = len(vocab)
    with tempfile.TemporaryDirectory(prefix="llmtune-vocab-") as tmp:
        path = Path(tmp) / "vocab.json"
        path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        return Wav2Vec2CTCTokenizer(
            str(path), unk_token=UNK, pad_token=PAD, word_delimiter_token=DELIMITER, bos_token=None, eos_token=None
        )


class ClipEncoder:
    """Batched ``datasets.map`` function: decode, filter by duration, extract features, encode labels.

    Rows outside the duration limits are kept with a ``drop_reason`` (and no features) so the
    counts survive the datasets cache; ``prepare`` counts and filters them.
    """

    def __init__(
        self,
        fe: Any,
        tokenizer: Any,
        family: str,
        text_col: str,
        audio_col: str,
        options: AsrOptions,
        limit_s: float | None,
        transform: TargetText | None,
        max_label_tokens: int | None = None,
    ):
        self.fe, self.tok, self.family = fe, tokenizer, family
        self.text_col, self.audio_col, self.o = text_col, audio_col, options
        self.limit_s, self.transform = limit_s, transform
        self.rate = int(fe.sampling_rate)
        self.name = input_name(fe)
        self.max_label_tokens = max_label_tokens
        self.known = set(tokenizer.get_vocab()) if family == "ctc" else None
        # Dropped rows carry placeholder features/labels of the right types (Arrow needs one
        # type per column): the features of 0.2 s of silence and one pad id.
        self.placeholder: Any = None

    def _placeholder(self) -> Any:
        import numpy as np

        if self.placeholder is None:
            silence = np.zeros(int(0.2 * self.rate), dtype=np.float32)
            self.placeholder = self.fe(silence, sampling_rate=self.rate)[self.name][0]
        return self.placeholder

    def labels(self, text: str, where: str, split: str) -> list[int]:
        if self.family == "ctc":
            target = self.transform(text)
            unknown = sorted({ch for ch in target if ch != " " and ch not in self.known})
            if unknown:
                shown = "".join(unknown)
                raise LlmtuneError(
                    f"transcription of {where} (split '{split}', column '{self.text_col}') has characters outside "
                    f"the model's vocabulary: {' '.join(repr(c) for c in unknown)}; remove them from the data or "
                    f"with --set options.chars_to_ignore='{shown}'"
                )
            return self.tok(target).input_ids
        ids = self.tok(text).input_ids
        if self.max_label_tokens and len(ids) > self.max_label_tokens:
            raise LlmtuneError(
                f"transcription of {where} (split '{split}') is {len(ids)} tokens, more than the model's "
                f"{self.max_label_tokens}: shorten or split the clip"
            )
        return ids

    def __call__(self, batch: dict, split: str, speeds: list[float]) -> dict:
        from llmtune.audio import describe, load_audio, resample

        o = self.o
        out: dict[str, list] = {self.name: [], "labels": [], "length": [], "audio_path": [], "reference": []}
        out["drop_reason"] = []
        for source, text in zip(batch[self.audio_col], batch[self.text_col], strict=True):
            where = describe(source)
            if text is None or not str(text).strip():
                raise LlmtuneError(
                    f"empty transcription for {where} (split '{split}', column '{self.text_col}'): every clip needs "
                    f"its text; remove the row or fill it in"
                )
            try:
                samples, _ = load_audio(source, self.rate)
            except LlmtuneError as exc:
                raise LlmtuneError(f"split '{split}', column '{self.audio_col}': {exc}") from exc
            seconds = len(samples) / self.rate
            reason = ""
            if seconds < o.min_duration_s:
                reason = f"shorter than {o.min_duration_s:g} s (options.min_duration_s)"
            elif o.max_duration_s is not None and seconds > o.max_duration_s:
                reason = f"longer than {o.max_duration_s:g} s (options.max_duration_s)"
            elif self.limit_s is not None and seconds > self.limit_s:
                raise LlmtuneError(
                    f"clip {where} (split '{split}') lasts {seconds:.1f} s, longer than the {self.limit_s:g} s the "
                    f"model takes: drop long clips with --set options.max_duration_s={self.limit_s:g}, or split them"
                )
            labels = self.labels(str(text), where, split) if not reason else [self.tok.pad_token_id or 0]
            versions = [samples] if not reason else [None]
            for factor in speeds if not reason else []:
                # speed factor s: play s times faster = resample from rate to rate / s
                ratio = Fraction(1 / factor).limit_denominator(100)
                versions.append(resample(samples, ratio.denominator, ratio.numerator))
            for clip in versions:
                features = self._placeholder() if clip is None else self.fe(clip, sampling_rate=self.rate)[self.name][0]
                out[self.name].append(features)
                out["labels"].append(labels)
                out["length"].append(len(features))
                out["audio_path"].append(where)
                out["reference"].append(str(text).strip())
                out["drop_reason"].append(reason)
        return out


class SpeechCollator:
    """Pads model inputs with the feature extractor (attention mask where the model wants one)
    and labels with -100; for encoder-decoder labels, a leading decoder-start token is dropped
    (the model prepends it when shifting labels right)."""

    def __init__(self, fe: Any, tokenizer: Any, name: str, decoder_start_token_id: int | None = None):
        self.fe, self.tok, self.name = fe, tokenizer, name
        self.start = decoder_start_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        inputs = [{self.name: f[self.name]} for f in features]
        batch = self.fe.pad(inputs, return_tensors="pt", **_mask_kwargs(self.fe))
        if "labels" in features[0]:
            longest = max(len(f["labels"]) for f in features)
            labels = torch.full((len(features), longest), -100, dtype=torch.long)
            for i, f in enumerate(features):
                labels[i, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
            if self.start is not None and len(labels) and bool((labels[:, 0] == self.start).all()):
                labels = labels[:, 1:]
            batch["labels"] = labels
        return dict(batch)


def freeze_feature_encoder(model: Any) -> None:
    """Keep the convolutional front-end fixed: wav2vec2-style waveform encoders, Whisper's two
    input convolutions."""
    if hasattr(model, "freeze_feature_encoder"):
        model.freeze_feature_encoder()
        return
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else None
    convs = [getattr(encoder, name) for name in ("conv1", "conv2") if hasattr(encoder, name)]
    if not convs:
        raise LlmtuneError(
            f"options.freeze_feature_encoder: {type(model).__name__} has no convolutional feature encoder to "
            f"freeze: set it to false"
        )
    for conv in convs:
        for param in conv.parameters():
            param.requires_grad = False


def ctc_frame_ids(model: Any, inputs: dict, logits: Any) -> Any:
    """Argmax ids per output frame, frames past each clip's end set to -100."""
    import torch

    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    ids = logits.argmax(-1)
    mask = inputs.get("attention_mask")
    base = getattr(model, "module", model)
    if mask is not None and hasattr(base, "_get_feat_extract_output_lengths"):
        lengths = base._get_feat_extract_output_lengths(mask.sum(-1)).to(ids.device)
        frames = torch.arange(ids.shape[1], device=ids.device)[None, :]
        ids = ids.masked_fill(frames >= lengths[:, None], -100)
    return ids


# ---- data layout ----------------------------------------------------------------------------


def audiofolder_splits(folder: Path) -> dict[str, Path] | None:
    """Metadata files of an audiofolder layout, by split, or None when ``folder`` is not one."""
    from llmtune.data import SPLIT_ALIASES

    for name in METADATA_FILES:
        if (folder / name).is_file():
            return {"train": folder / name}
    found: dict[str, Path] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        split = SPLIT_ALIASES.get(sub.name.lower())
        meta = next((sub / n for n in METADATA_FILES if (sub / n).is_file()), None)
        if split and meta is not None:
            found.setdefault(split, meta)
    return found or None


def load_metadata(files: dict[str, Path], streaming: bool) -> Any:
    from llmtune.data import load_files

    return load_files({split: [path] for split, path in files.items()}, streaming, None)


def _source_split(split: str, data: Any, folders: dict[str, Path]) -> str:
    """Which metadata file a split came from (a carved validation split comes from train)."""
    if split in folders:
        return split
    return "train"


def absolute_audio(ds: Any, audio_col: str, base: Path | None) -> Any:
    """Audio values as sources :func:`llmtune.audio.load_audio` reads: paths made absolute
    (relative to the metadata/data file), Hub ``Audio`` columns kept undecoded (bytes + path)."""
    feature = (ds.features or {}).get(audio_col) if ds.features is not None else None
    if feature is not None and type(feature).__name__ == "Audio":
        from datasets import Audio

        return ds.cast_column(audio_col, Audio(decode=False))
    if base is None:
        return ds

    def resolve(batch: dict) -> dict:
        values = []
        for value in batch[audio_col]:
            if isinstance(value, str) and value and not Path(value).is_absolute():
                value = str(base / value)
            values.append(value)
        return {audio_col: values}

    return _map(ds, resolve, batched=True, desc="resolving audio paths")


def _first_rate(ds: Any, audio_col: str) -> int:
    from llmtune.audio import audio_rate

    row = next(iter(ds.select_columns([audio_col]).take(1) if _is_streaming(ds) else [ds[0]]))
    source = row[audio_col]
    try:
        return audio_rate(source)
    except LlmtuneError as exc:
        raise LlmtuneError(f"column '{audio_col}': {exc}") from exc


def _all_texts(raw: Any, text_col: str) -> list[str]:
    from llmtune.data import column_names

    texts: list[str] = []
    for ds in raw.values():
        if text_col not in column_names(ds):
            continue
        if _is_streaming(ds):
            texts.extend(r[text_col] or "" for r in ds.select_columns([text_col]))
        else:
            texts.extend(t or "" for t in ds[text_col])
    return texts


def _dropped_text(counts: dict) -> str:
    return ", ".join(f"{n} clip(s) {reason}" for reason, n in sorted(counts.items()))


def _is_streaming(ds: Any) -> bool:
    from datasets import IterableDataset

    return isinstance(ds, IterableDataset)


def _map(ds: Any, fn: Any, **kwargs: Any) -> Any:
    desc = kwargs.pop("desc", None)
    num_proc = kwargs.pop("num_proc", None)
    if _is_streaming(ds):
        kwargs.pop("writer_batch_size", None)
        return ds.map(fn, **kwargs)
    return ds.map(fn, desc=desc, num_proc=num_proc, **kwargs)
