"""Synthetic speech-like audio for the asr tests and the shipped ``asr_demo`` data.

Each letter is a tone of its own pitch (100 ms, with a short fade), words are separated by
silence, and a little noise is added: a tiny CTC model learns to "read" it in a few hundred steps.
Regenerate the shipped demo with ``python -m tests.asr_utils llmtune/resources/asr_demo``.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np

WORDS = ["up", "down", "left", "right", "go", "stop", "on", "off"]
LETTERS = sorted(set("".join(WORDS)))
# letter -> frequency (Hz), spread over 250..3400 Hz on a log scale (fits 8 kHz audio)
PITCH = {ch: float(250 * (3400 / 250) ** (i / (len(LETTERS) - 1))) for i, ch in enumerate(LETTERS)}
LETTER_S, GAP_S = 0.1, 0.12


def synth(text: str, rate: int = 8000, seed: int = 0, stereo: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(LETTER_S * rate)
    t = np.arange(n) / rate
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * rate))
    parts = [np.zeros(int(GAP_S * rate))]
    for w, word in enumerate(text.split()):
        if w:
            parts.append(np.zeros(int(GAP_S * rate)))
        for ch in word:
            pitch = PITCH[ch] * rng.uniform(0.97, 1.03)  # a bit of "speaker" variation
            parts.append(0.4 * np.sin(2 * np.pi * pitch * t) * fade)
    parts.append(np.zeros(int(GAP_S * rate)))
    audio = np.concatenate(parts)
    audio = audio + rng.normal(0, 0.003, len(audio))
    if stereo:  # the same signal, quieter on the right
        audio = np.stack([audio, 0.5 * audio], axis=1)
    return audio.astype(np.float32)


def sentences(n: int, seed: int = 0, max_words: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


def write_clips(folder: Path, texts: list[str], rate: int = 8000, fmt: str = "wav", seed: int = 0) -> list[str]:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, text in enumerate(texts):
        name = f"clip_{seed}_{i:03d}.{fmt}"
        sf.write(str(folder / name), synth(text, rate, seed=seed * 1000 + i), rate, subtype="PCM_16")
        names.append(name)
    return names


def write_audiofolder(
    root: Path, splits: dict[str, int], rate: int = 8000, fmt: str = "wav", metadata: str = "csv", seed: int = 0
) -> Path:
    """``root/<split>/`` with clips and a metadata file (file_name, transcription) per split."""
    for k, (split, n) in enumerate(splits.items()):
        texts = sentences(n, seed=seed + k)
        folder = root / split
        names = write_clips(folder, texts, rate, fmt, seed=seed + k)
        write_metadata(folder, names, texts, metadata)
    return root


def write_metadata(folder: Path, names: list[str], texts: list[str], kind: str = "csv") -> Path:
    if kind == "csv":
        path = folder / "metadata.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file_name", "transcription"])
            writer.writerows(zip(names, texts, strict=True))
    else:
        path = folder / "metadata.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for name, text in zip(names, texts, strict=True):
                fh.write(json.dumps({"file_name": name, "transcription": text}) + "\n")
    return path


def save_tiny_ctc(out: Path) -> Path:
    """A random 2-layer wav2vec2 CTC model with a fixed character vocabulary (the demo letters),
    saved with its processor in ``out``."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    from llmtune.tasks.asr.processor import TargetText, build_ctc_tokenizer

    tok = build_ctc_tokenizer(WORDS, TargetText("", lowercase=True))
    fe = Wav2Vec2FeatureExtractor(sampling_rate=8000, return_attention_mask=True)
    config = Wav2Vec2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer", pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).save_pretrained(out)
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(out)
    return out


def make_demo(root: Path) -> None:
    """The shipped offline demo: FLAC training clips, WAV validation clips (one of them stereo
    at 16 kHz, so decoding, mixing down and resampling are exercised)."""
    import soundfile as sf

    write_audiofolder(root, {"train": 40}, fmt="flac", seed=10)
    texts = sentences(10, seed=11)
    names = write_clips(root / "validation", texts[:-1], fmt="wav", seed=11)
    stereo = "clip_stereo_16k.wav"
    sf.write(str(root / "validation" / stereo), synth(texts[-1], 16000, seed=99, stereo=True), 16000)
    write_metadata(root / "validation", [*names, stereo], texts, "csv")


if __name__ == "__main__":
    make_demo(Path(sys.argv[1]))
