"""The ``asr`` task: hooks for CTC and encoder-decoder (Whisper) speech recognition models (see
:mod:`llmtune.tasks.asr`). Module level stays torch-free.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.metrics.asr import NORMALIZERS
from llmtune.tasks.asr.audio_data import (
    AUDIO_COLUMNS,
    TEXT_COLUMNS,
    absolute_audio,
    all_texts,
    audiofolder_splits,
    first_rate,
    is_streaming,
    load_metadata,
    map_dataset,
    source_split,
)
from llmtune.tasks.asr.decoding import CtcDecoder, resolve_spec, save_decoder, validate_options
from llmtune.tasks.asr.features import ClipEncoder, SpeechCollator
from llmtune.tasks.asr.model import (
    SCRATCH_TYPES,
    ctc_frame_ids,
    ctc_log_probs,
    freeze_feature_encoder,
    model_family,
)
from llmtune.tasks.asr.options import WHISPER_TASKS, AsrOptions
from llmtune.tasks.asr.processor import (
    DELIMITER,
    PAD,
    TargetText,
    build_ctc_tokenizer,
    build_feature_extractor,
    input_name,
    load_feature_extractor,
    load_model_tokenizer,
    make_processor,
    mask_kwargs,
    model_max_seconds,
    scratch_rate,
)
from llmtune.tasks.base import Default, RunContext, Task, from_scratch, predict_outputs

# Rows per batched decoding map call: bounds the memory held by decoded audio.
MAP_BATCH = 32


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
    defaults = (Default("train.learning_rate", 1e-3, "random initialisation wants a larger step", when=from_scratch),)

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
        p += validate_options(o)
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

        from llmtune.modeling import hub_error, model_architecture, model_location

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
            raise hub_error("model", spec, exc) from exc

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
        feature_extractor = load_feature_extractor(source) if source else None
        tokenizer = (
            load_model_tokenizer(tok_source, required=family == "seq2seq" or not ctx.training) if tok_source else None
        )
        if family == "seq2seq" and ctx.cfg.options.decoder != "greedy":
            raise LlmtuneError(
                f"options.decoder={ctx.cfg.options.decoder} is for CTC models; {config.model_type} is an "
                f"encoder-decoder model: remove it (options.num_beams sets its beam search)"
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
        if family == "ctc" and not ctx.training:
            # the decoder (and the lexicon / LM files) the saved model decodes with, or --set overrides
            ctx.state["decoder_spec"] = resolve_spec(ctx.cfg.options, False, ctx.model_path, None, Path("."))
            self._ctc_decoder(ctx)
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
            bases = {split: folders[source_split(split, cfg.data, folders)].parent for split in raw}
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
        streaming = is_streaming(first)

        fe = ctx.state["feature_extractor"]
        if fe is None:  # from scratch: a feature extractor for the data's sample rate
            rate = o.sampling_rate or scratch_rate(ctx.state["model_type"], first_rate(first, audio_col))
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
                texts = all_texts(raw, text_col)
                tok = build_ctc_tokenizer(texts, ctx.state["text_transform"])
                ctx.state["text_tokenizer"] = tok
            else:
                ctx.state["text_transform"].fit_case(tok)
            if ctx.training:
                self._training_decoder(ctx, raw, text_col)
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
            encoded = map_dataset(
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

    # ---- CTC decoding (greedy, beam, lexicon + LM) ------------------------------------------------
    def _training_decoder(self, ctx: RunContext, raw: Any, text_col: str) -> None:
        """The run's decoder; ``auto`` lexicon / LM built from the training transcriptions only."""
        import tempfile

        transform = ctx.state["text_transform"]
        train = {"train": raw["train"]} if "train" in raw else {}

        def texts() -> list[str]:
            return [transform(t) for t in all_texts(train, text_col)]

        workdir = Path(tempfile.mkdtemp(prefix="llmtune-asr-lm-"))
        ctx.state["decoder_spec"] = resolve_spec(ctx.cfg.options, True, None, texts, workdir, transform)
        self._ctc_decoder(ctx)

    def _ctc_decoder(self, ctx: RunContext) -> CtcDecoder | None:
        """The beam / lexicon decoder (None: greedy), built once per run."""
        if "ctc_decoder" not in ctx.state:
            spec = ctx.state.get("decoder_spec")
            tok = ctx.state["text_tokenizer"]
            delimiter = getattr(tok, "word_delimiter_token", None) or DELIMITER
            ctx.state["ctc_decoder"] = spec.build(tok, delimiter) if spec is not None else None
        return ctx.state["ctc_decoder"]

    def _decode_clips(self, ctx: RunContext, model: Any, inputs: dict, logits: Any) -> list[str]:
        decoder = self._ctc_decoder(ctx)
        return [decoder.decode(lp) for lp in ctc_log_probs(model, inputs, logits)]

    def _text_ids(self, ctx: RunContext, texts: list[str]) -> Any:
        """Decoded transcripts as padded character ids (-100), what ``decode`` reads back."""
        import numpy as np

        tok = ctx.state["text_tokenizer"]
        vocab = tok.get_vocab()
        space = vocab.get(getattr(tok, "word_delimiter_token", None) or DELIMITER)
        rows = [[space if ch == " " else vocab.get(ch, tok.unk_token_id) for ch in t] for t in texts]
        ids = np.full((len(rows), max([len(r) for r in rows] + [1])), -100, dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return ids

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

        from llmtune.loading import load_model

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
        from llmtune.loading import load_model

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

    def save_extras(self, ctx: RunContext, output_dir: Any) -> None:
        spec = ctx.state.get("decoder_spec")
        if spec is not None and (spec.kind != "greedy" or spec.lexicon or spec.lm):
            o = ctx.cfg.options
            save_decoder(output_dir, spec, {"lexicon": o.lexicon, "lm": o.lm})

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
        (padding, never decoded); with a beam / lexicon decoder, the characters of each decoded
        transcript instead. Encoder-decoder models use the Trainer's generation step."""
        if ctx.state["family"] != "ctc":
            return None
        import torch

        def step(model: Any, inputs: dict) -> tuple:
            out = model(**inputs)
            if self._ctc_decoder(ctx) is None:
                return out.loss, ctc_frame_ids(model, inputs, out.logits), inputs.get("labels")
            texts = self._decode_clips(ctx, model, inputs, out.logits)
            ids = torch.from_numpy(self._text_ids(ctx, texts)).to(out.logits.device)
            return out.loss, ids, inputs.get("labels")

        return step

    # ---- metrics, predictions ---------------------------------------------------------------
    def decode(self, ctx: RunContext, ids: Any, references: bool = False) -> list[str]:
        import numpy as np

        tok = ctx.state["text_tokenizer"]
        ids = ids[0] if isinstance(ids, tuple) else ids
        fill = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = np.where(np.asarray(ids) < 0, fill, ids)
        if ctx.state["family"] == "ctc":
            # Labels (and beam / lexicon transcripts) are plain character ids (a doubled letter is
            # two ids), not CTC frames.
            frames = not references and ctx.state.get("ctc_decoder") is None
            texts = tok.batch_decode(ids, group_tokens=frames)
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
        spec = ctx.state.get("decoder_spec")
        if spec is not None:
            lines.append(f"- **Decoding:** {_decoder_text(spec)}")
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
            feats = fe(clips, sampling_rate=rate, return_tensors="pt", padding=True, **mask_kwargs(fe))
            inputs = {k: v.to(device) for k, v in feats.items() if k in (name, "attention_mask")}
            with torch.no_grad():
                if ctx.state["family"] == "ctc":
                    logits = model(**inputs).logits
                    if self._ctc_decoder(ctx) is not None:
                        texts.extend(self._decode_clips(ctx, model, inputs, logits))
                        continue
                    ids = ctc_frame_ids(model, inputs, logits)
                else:
                    ids = model.generate(**inputs)
            texts.extend(self.decode(ctx, ids.cpu().numpy()))
        return texts


def _dropped_text(counts: dict) -> str:
    return ", ".join(f"{n} clip(s) {reason}" for reason, n in sorted(counts.items()))


def _decoder_text(spec: Any) -> str:
    if spec.kind == "greedy":
        return "greedy CTC (argmax per frame)"
    text = f"CTC {spec.kind} search, beam width {spec.beam_width}"
    if spec.kind == "lexicon":
        text += f", lexicon `{spec.lexicon.name}`"
        if spec.lm is not None:
            text += f", n-gram LM `{spec.lm.name}` (alpha {spec.alpha:g}, beta {spec.beta:g})"
    return text + " (saved with the model: `ctc_decoder.json`, `language_model/`)"
