"""The speech model: its family (CTC or encoder-decoder), the model types trained from scratch,
feature-encoder freezing, greedy CTC ids per frame and per-clip log-probabilities (for beam
decoding). Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError

# Model types a size preset / config.json may name for training from scratch (CTC).
SCRATCH_TYPES = ("wav2vec2-bert", "wav2vec2", "wav2vec2-conformer", "hubert", "wavlm")


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


def ctc_log_probs(model: Any, inputs: dict, logits: Any) -> list[Any]:
    """Per clip, the (frames, vocabulary) log-probabilities as float32 numpy arrays, frames past
    the clip's end cut off (what a beam or lexicon decoder reads)."""
    import torch

    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
    lengths = [log_probs.shape[1]] * log_probs.shape[0]
    mask = inputs.get("attention_mask")
    base = getattr(model, "module", model)
    if mask is not None and hasattr(base, "_get_feat_extract_output_lengths"):
        lengths = base._get_feat_extract_output_lengths(mask.sum(-1)).tolist()
    return [lp[: int(n)] for lp, n in zip(log_probs, lengths, strict=True)]
