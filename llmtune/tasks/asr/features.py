"""Clip encoding (decode, duration filter, features, labels; a ``datasets.map`` function) and the
collator that pads a batch. Module level stays torch-free.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.asr.options import AsrOptions
from llmtune.tasks.asr.processor import TargetText, input_name, mask_kwargs


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
        batch = self.fe.pad(inputs, return_tensors="pt", **mask_kwargs(self.fe))
        if "labels" in features[0]:
            longest = max(len(f["labels"]) for f in features)
            labels = torch.full((len(features), longest), -100, dtype=torch.long)
            for i, f in enumerate(features):
                labels[i, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
            if self.start is not None and len(labels) and bool((labels[:, 0] == self.start).all()):
                labels = labels[:, 1:]
            batch["labels"] = labels
        return dict(batch)
