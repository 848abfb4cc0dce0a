"""Chat formatting through the tokenizer's chat template, with a fallback for base models."""

from __future__ import annotations

from typing import Any

# Gemma's turn format; used when a Gemma tokenizer (it has the turn tokens) lacks a template,
# as the GGUF-converted embedded base does.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PLAIN_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> None:
    """Give ``tokenizer`` a chat template if it has none (Gemma turns, else plain roles)."""
    if getattr(tokenizer, "chat_template", None):
        return
    vocab = tokenizer.get_vocab()
    tokenizer.chat_template = GEMMA_TEMPLATE if "<start_of_turn>" in vocab else PLAIN_TEMPLATE


def render_chat(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Render ``messages`` to text with the chat template (BOS included when it has one)."""
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def chat_prompt(tokenizer: Any, user_text: str) -> str:
    """A single-turn user prompt ready for generation."""
    return render_chat(tokenizer, [{"role": "user", "content": user_text}],
                       add_generation_prompt=True)
