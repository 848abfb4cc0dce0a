"""Tiny random-init models and a tiny tokenizer, built in the test process (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "gpt_neox")

_TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A river runs through the old town near the hills.",
    "Scientists measured the speed of light with great care.",
    "She wrote a letter to her friend about the concert.",
    "Engines, wheels and gears make the machine move forward.",
    "Cake batter with flour, butter and sugar goes into the oven.",
]


def tiny_tokenizer():
    """A byte-level BPE tokenizer (~400 tokens) with <s> BOS, </s> EOS and <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_TRAIN_TEXT * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_config(family: str, vocab_size: int = 400):
    """A 4-layer, d=32 config of ``family``."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      **common)
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(**llama_like, sliding_window=64)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if family == "qwen3":
        return tf.Qwen3Config(**llama_like, head_dim=8)
    if family == "gemma2":
        return tf.Gemma2Config(**llama_like, head_dim=8, final_logit_softcapping=30.0)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**llama_like, head_dim=8, sliding_window=16)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=128, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                num_attention_heads=4, max_position_embeddings=128, **common)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0, vocab_size: int = 400):
    """A random-init causal LM of ``family`` in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size))
    model.eval()
    return model


def save_tiny(path: Path, family: str = "llama", seed: int = 0, tokenizer=None) -> Path:
    """Save a tiny model (safetensors) and tokenizer to ``path``."""
    model = tiny_model(family, seed)
    model.save_pretrained(path, safe_serialization=True)
    (tokenizer or tiny_tokenizer()).save_pretrained(path)
    return path
