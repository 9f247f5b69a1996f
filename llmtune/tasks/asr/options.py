"""``options.*`` of an asr run: columns, sample rate, scoring, CTC targets, duration filters,
augmentation, model config knobs, Whisper language/task and generation, CTC decoding (beam,
lexicon, n-gram language model).
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
    # CTC decoding (see llmtune.tasks.asr.decoding): greedy (argmax per frame), beam (prefix beam
    # search over characters) or lexicon (words of options.lexicon only, scored by options.lm if
    # set). beam and lexicon need the asr-lm extra. Saved with the model; eval/predict/serve decode
    # the same way unless --set options.decoder=... says otherwise.
    decoder: str = "greedy"
    beam_width: int = 50
    # lexicon decoder: auto (the words of the training transcriptions, saved with the model) or a
    # file of words, one a line (the first field of each line).
    lexicon: str = "auto"
    # Word n-gram LM for the lexicon decoder: an ARPA or KenLM binary file, or auto (an order
    # lm_order interpolated Kneser-Ney model of the training transcriptions plus the lines of
    # lm_text, built at training time and saved with the model); None = no LM.
    lm: str | None = None
    lm_order: int = 3
    lm_text: str | None = None
    # Score = log p_ctc + lm_alpha * log p_lm + lm_beta * words (tune both on the validation
    # split: llmtune eval --split validation --set options.lm_alpha=...).
    lm_alpha: float = 0.5
    lm_beta: float = 0.0
