"""``options.*`` of an asr run: columns, sample rate, scoring, CTC targets, duration filters,
augmentation, model config knobs, Whisper language/task and generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WHISPER_TASKS = ("transcribe", "translate")


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
