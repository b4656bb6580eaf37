"""The chat template: messages to the one prompt string the model sees. The server renders chat
requests with it and supervised fine-tuning trains on the same shape, so they agree."""

from __future__ import annotations

ROLES = ("system", "user", "assistant")


def render(messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
    """`<|role|>\\ncontent\\n` per message, an assistant's content closed by <|eos|> (where it
    stops generating); then `<|assistant|>\\n` for the reply to come."""
    text = "".join(
        f"<|{m['role']}|>\n{m['content']}{'<|eos|>' if m['role'] == 'assistant' else ''}\n"
        for m in messages
    )
    return text + ("<|assistant|>\n" if generation_prompt else "")
