"""Feature extractor, tokenizer and processor: loaded from a model, or built for a model trained
from scratch (a CTC vocabulary from the transcriptions, a feature extractor for the data's rate).
Module level stays torch-free.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError

# Special tokens of a vocabulary built from the data: CTC blank (= padding), unknown, word delimiter.
PAD, UNK, DELIMITER = "<pad>", "<unk>", "|"


def load_feature_extractor(spec: str) -> Any:
    """The model's feature extractor, or None when it ships none (no preprocessor_config.json)."""
    from transformers import AutoFeatureExtractor

    from llmtune.modeling import hub_error, model_location

    try:
        return AutoFeatureExtractor.from_pretrained(model_location(spec))
    except (OSError, ValueError) as exc:
        if "preprocessor_config" in str(exc) or "feature extractor" in str(exc).lower():
            return None
        raise hub_error("feature extractor", spec, exc) from exc


def load_model_tokenizer(spec: str, required: bool) -> Any:
    """The model's tokenizer, or None when it ships none (a vocabulary is then built from data)."""
    from transformers import AutoTokenizer

    from llmtune.modeling import hub_error, model_location

    try:
        return AutoTokenizer.from_pretrained(model_location(spec))
    except Exception as exc:  # a wav2vec2 pretraining checkpoint has no vocab.json: TypeError/OSError
        if required:
            raise hub_error("tokenizer", spec, exc) from exc
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


def mask_kwargs(fe: Any) -> dict:
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
