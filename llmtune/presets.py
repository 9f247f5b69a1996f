"""Architecture size presets for pretraining from scratch (``model.config: gpt2-small``).

A preset is a ``transformers`` model type plus config keys; vocabulary size and special-token
ids always come from the tokenizer at build time. Sizes follow the published families (BERT
mini/small from Turc et al. 2019, GPT-2 small from Radford et al. 2019); the "tiny" ones are
for CPU smoke runs and tests. Torch-free: config validation imports this module.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # --- encoders (masked LM) -------------------------------------------------------------
    "bert-tiny": dict(
        model_type="bert",
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=512,
    ),
    "bert-mini": dict(
        model_type="bert",
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
    ),
    "bert-small": dict(
        model_type="bert",
        hidden_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        intermediate_size=2048,
        max_position_embeddings=512,
    ),
    "bert-base": dict(
        model_type="bert",
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    ),
    # --- decoders (causal LM) -------------------------------------------------------------
    "gpt2-tiny": dict(model_type="gpt2", n_embd=128, n_layer=2, n_head=2, n_positions=512),
    "gpt2-mini": dict(model_type="gpt2", n_embd=256, n_layer=4, n_head=4, n_positions=1024),
    "gpt2-small": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    "llama-tiny": dict(
        model_type="llama",
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    ),
    # --- speech recognition (CTC, from scratch; ``llmtune finetune --task asr``) ------------------
    # Wav2Vec2-BERT (conformer) layers over log-mel filterbanks: a convolution-free front-end that
    # learns from little data on a CPU. The CTC vocabulary comes from the transcriptions (vocab_size
    # here is a nominal character set, for estimates before the data is read).
    "ctc-tiny": dict(
        model_type="wav2vec2-bert",
        vocab_size=32,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        conv_depthwise_kernel_size=7,
        layerdrop=0.0,
        mask_time_prob=0.05,
        mask_time_length=5,
        mask_feature_prob=0.0,
        hidden_dropout=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        conformer_conv_dropout=0.0,
    ),
    "ctc-small": dict(
        model_type="wav2vec2-bert",
        vocab_size=32,
        hidden_size=144,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=576,
        conv_depthwise_kernel_size=15,
        layerdrop=0.0,
        mask_time_prob=0.1,
        mask_time_length=5,
        mask_feature_prob=0.2,
        mask_feature_length=8,
        hidden_dropout=0.1,
        final_dropout=0.1,
    ),
}

# Model types that can serve each objective (a preset of the wrong kind is a config error).
ENCODER_TYPES = {"bert", "roberta", "distilbert", "electra", "deberta-v2", "modernbert"}
DECODER_TYPES = {"gpt2", "llama", "mistral", "qwen2", "gpt_neox", "opt"}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> dict | None:
    """A copy of the preset's keys (``model_type`` included), or None if ``name`` is not one."""
    preset = PRESETS.get(name.strip().lower())
    return dict(preset) if preset is not None else None


def near_preset(name: str) -> str | None:
    """The preset ``name`` is probably a typo of (``gpt2-smal`` -> ``gpt2-small``), else None.

    Lets config validation reject typos at once instead of after a failed Hub lookup, while
    real Hub config names (``gpt2-medium``, ``bert-base-uncased``) stay allowed.
    """
    import difflib

    key = name.strip().lower()
    if key in PRESETS or "/" in key or key.endswith(".json"):
        return None
    close = difflib.get_close_matches(key, PRESETS, n=1, cutoff=0.85)
    return close[0] if close else None
