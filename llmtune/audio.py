"""Audio decoding for speech tasks: files or bytes -> mono float32 at the wanted sample rate.

``datasets``' own ``Audio`` decoding needs ``torchcodec`` and, through it, FFmpeg libraries from the
system package manager. llmtune decodes with ``soundfile`` instead, whose wheels bundle libsndfile
(WAV, FLAC, OGG/Vorbis, Opus and, with libsndfile >= 1.1, MP3): ``pip install`` is enough on a
fresh machine. Multi-channel audio is mixed down to mono (the channel mean); any sample rate is
resampled with SciPy's polyphase filter (``scipy.signal.resample_poly``).

Sources accepted everywhere (``load_audio``): a file path, a ``datasets`` Audio value read with
``decode=False`` (``{"bytes": ..., "path": ...}``), an already decoded ``{"array": ..., "sampling_rate":
...}``, or an ``(array, sampling_rate)`` pair.
"""

from __future__ import annotations

import io
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from llmtune.errors import LlmtuneError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError as exc:  # pragma: no cover - the audio extra is missing
        raise LlmtuneError("speech recognition needs the soundfile package: pip install 'llmtune[audio]'") from exc
    return soundfile


def describe(source: Any) -> str:
    """How to name a source in a message: its path, or what it is."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, dict) and source.get("path"):
        return str(source["path"])
    return "an in-memory clip"


def read_audio(source: Any) -> tuple[np.ndarray, int]:
    """Decode ``source`` to (mono float32 samples, sample rate), without resampling."""
    sf = _soundfile()
    if isinstance(source, tuple) and len(source) == 2:
        array, rate = source
        return mono(np.asarray(array, dtype=np.float32)), int(rate)
    if isinstance(source, dict) and source.get("array") is not None:
        return mono(np.asarray(source["array"], dtype=np.float32)), int(source["sampling_rate"])
    if isinstance(source, dict):
        data, path = source.get("bytes"), source.get("path")
        if data is None and path is None:
            raise LlmtuneError("an audio value has neither bytes nor a path")
        target: Any = io.BytesIO(data) if data is not None else path
    elif isinstance(source, (str, Path)):
        target = str(source)
    elif isinstance(source, (bytes, bytearray)):
        target = io.BytesIO(source)
    else:
        raise LlmtuneError(f"cannot read audio from a {type(source).__name__}: pass a file path or bytes")
    if isinstance(target, str) and not Path(target).is_file():
        raise LlmtuneError(f"audio file not found: {target}")
    try:
        samples, rate = sf.read(target, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile.LibsndfileError, RuntimeError on older versions
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlmtuneError(
            f"{describe(source)} is not readable audio ({reason}): use WAV, FLAC, OGG or MP3 files "
            f"(decoded with soundfile/libsndfile)"
        ) from exc
    if samples.shape[0] == 0:
        raise LlmtuneError(f"{describe(source)} holds no audio samples: remove it or replace it")
    return mono(samples), int(rate)


def mono(samples: np.ndarray) -> np.ndarray:
    """Mix (frames, channels) down to (frames,); a 1-D array is returned as it is."""
    if samples.ndim == 2:
        # soundfile gives (frames, channels); a (channels, frames) array has few rows
        samples = samples.mean(axis=1) if samples.shape[1] <= samples.shape[0] else samples.mean(axis=0)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples
    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(samples, target // g, rate // g).astype(np.float32)


def load_audio(source: Any, target_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decoded mono float32 samples at ``target_rate`` (or the file's own rate when None)."""
    samples, rate = read_audio(source)
    if target_rate is not None and rate != target_rate:
        samples, rate = resample(samples, rate, target_rate), target_rate
    return samples, rate


def audio_rate(source: Any) -> int:
    """The sample rate of a source, reading only the header of files when possible."""
    if isinstance(source, (str, Path)) and Path(source).is_file():
        try:
            return int(_soundfile().info(str(source)).samplerate)
        except Exception:
            pass
    return read_audio(source)[1]
