"""Speech recognition (``asr``): CTC models (wav2vec2, HuBERT, WavLM, Wav2Vec2-BERT...) and
encoder-decoder models (Whisper, Speech2Text...), fine-tuned or a small CTC model from scratch.

Family: read from the model config. Types in transformers' CTC mapping load with
``AutoModelForCTC``, types in its speech seq2seq mapping with ``AutoModelForSpeechSeq2Seq``.

- CTC: labels are the characters of the transcription (``Wav2Vec2CTCTokenizer``; the space becomes
  the word delimiter ``|``, the pad token is the CTC blank). When the model ships no tokenizer (a
  pretraining checkpoint such as ``facebook/wav2vec2-base``) or starts from scratch, the vocabulary
  is built from the transcriptions (``<pad>``, ``<unk>``, ``|`` and every character seen), after
  ``options.lowercase`` / ``options.chars_to_ignore``. The CTC loss is averaged per utterance
  (``ctc_loss_reduction: mean``), so gradient accumulation and multi-process runs equal one large
  batch. Evaluation decodes greedily (argmax, repeats merged, blanks dropped), frames past each
  clip's end masked out, unless ``options.decoder`` asks for beam search or a lexicon (+ n-gram LM)
  decoder (:mod:`~llmtune.tasks.asr.decoding`), saved with the model.
- Encoder-decoder: labels are the tokenizer's ids; Whisper gets its ``<|lang|><|transcribe|>
  <|notimestamps|>`` prefix (``options.language``, ``options.whisper_task``), and the generation
  settings (``num_beams``, ``max_new_tokens``, language, task, no timestamps) are stored in the
  model's generation config, so the saved model transcribes the same way in ``pipeline``.
- From scratch: ``model.config`` names a speech preset (``ctc-tiny``, ``ctc-small``; see
  :mod:`llmtune.presets`) or a config.json of a CTC model type; the feature extractor is built for
  the data's sample rate (that of the first training clip, at least 16 kHz for the log-mel presets,
  or ``options.sampling_rate``).

Data: an audiofolder layout (a folder with ``metadata.csv``/``metadata.jsonl`` holding
``file_name`` and a transcription column, or ``train/``, ``validation/``, ``test/`` subfolders each
with one), csv/jsonl/parquet files with a column of audio paths (relative to the file), or Hub
datasets with an ``Audio`` column; streaming too. Audio is decoded by :mod:`llmtune.audio`
(soundfile), mixed to mono and resampled to the feature extractor's rate. Clips outside
``options.min_duration_s`` .. ``options.max_duration_s`` are dropped and counted; an empty
transcription, a missing or unreadable audio file, a clip longer than the model takes, or
characters outside a fixed vocabulary stop the run with one line naming the file.

Scores: corpus-level WER and CER (:mod:`llmtune.metrics.asr`) after ``options.normalize``, the same
in training-time evaluation and ``llmtune eval``. ``predictions.jsonl`` holds the audio path,
reference, hypothesis and per-utterance WER.

Modules, by role (module level stays torch-free in all of them):

- :mod:`~llmtune.tasks.asr.task`: the ``asr`` task's hooks (``AsrTask``).
- :mod:`~llmtune.tasks.asr.options`: ``options.*`` of an asr run (``AsrOptions``).
- :mod:`~llmtune.tasks.asr.model`: the model family (CTC or encoder-decoder), from-scratch model
  types, feature-encoder freezing, greedy CTC ids.
- :mod:`~llmtune.tasks.asr.processor`: feature extractor, tokenizer and processor: loaded from the
  model, or built (vocabulary from the transcriptions, feature extractor for the data's rate).
- :mod:`~llmtune.tasks.asr.features`: clip encoding (decode, duration filter, features, labels) and
  the padding collator.
- :mod:`~llmtune.tasks.asr.decoding`: beam / lexicon CTC decoders (flashlight-text, KenLM), the
  lexicon and LM files, saving and loading them with the model.
- :mod:`~llmtune.tasks.asr.ngram`: the interpolated Kneser-Ney ARPA writer of ``options.lm: auto``.
- :mod:`~llmtune.tasks.asr.audio_data`: audiofolder layouts, audio and transcription columns, audio
  paths, streaming-aware dataset helpers.
"""

from __future__ import annotations

from llmtune.tasks.asr.task import AsrTask

__all__ = ["TASKS", "AsrTask"]

TASKS = [AsrTask()]
