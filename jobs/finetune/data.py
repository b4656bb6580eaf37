"""Supervised fine-tuning examples: jsonl rows rendered with the chat template, tokenized, and
labelled so that the loss falls on the responses only.

A row is {"prompt", "response"} (one user turn, one assistant turn) or {"messages": [{"role",
"content"}, ...]} (every assistant turn is trained on). Each example becomes one row of length L:
token ids and labels, where a label is the next token's id on assistant text and its closing
<|eos|>, and -100 (ignored) everywhere else, padding included.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from lmforge.jobs.chat import ROLES
from lmforge.jobs.generate import EOS
from lmforge.jobs.storage import jsonl

IGNORE = -100


class ExampleError(ValueError):
    """A row cannot be used; the message names the line and the field."""


def read(uri: str, endpoint_url: str | None = None) -> list[list[dict[str, str]]]:
    """Every row as a list of messages, checked."""
    conversations = []
    for where, row in jsonl(uri, endpoint_url):  # a line that is not JSON: ValueError
        try:
            conversations.append(read_row(row))
        except ExampleError as error:
            raise ExampleError(f"{where}: {error}") from error
    if not conversations:
        raise ExampleError(f"{uri}: no rows")
    return conversations


def read_row(row: dict) -> list[dict[str, str]]:
    """A row's messages: {"messages": [...]}, or {"prompt", "response"} as one exchange."""
    if not isinstance(row, dict):
        raise ExampleError("a row is a JSON object")
    if "messages" in row:
        messages = row["messages"]
    elif "prompt" in row and "response" in row:
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"]},
        ]
    else:
        raise ExampleError("a row has prompt and response, or messages")
    if not isinstance(messages, list):
        raise ExampleError("messages must be a list")
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise ExampleError(
                f"messages[{i}] needs role ({'/'.join(ROLES)}) and content (a string)"
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise ExampleError("no assistant turn to learn from")
    return messages


def tokens(messages: list[dict[str, str]], tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    """The conversation's token ids as the server would see and produce them, and for each token
    whether it is trained on (an assistant's reply and its closing <|eos|>). Each header is
    tokenized apart from its reply, as the server tokenizes the prompt apart from what it
    generates."""
    ids, trained = [], []
    for message in messages:
        header = f"<|{message['role']}|>\n"
        if message["role"] == "assistant":
            parts = [(header, False), (message["content"] + EOS, True), ("\n", False)]
        else:
            parts = [(header + message["content"] + "\n", False)]
        for text, learn in parts:
            piece = tokenizer.encode(text, add_special_tokens=False).ids
            ids += piece
            trained += [learn] * len(piece)
    return ids, trained


def encode(
    conversations: list[list[dict[str, str]]], tokenizer: Tokenizer, length: int
) -> np.ndarray:
    """[examples, 2, length]: input ids, then the target of each position (the next token where
    it is trained on, else -100). An example longer than `length` + 1 tokens is an error: cut
    replies would teach the model to stop mid-sentence."""
    eos = tokenizer.token_to_id(EOS)
    rows = np.full((len(conversations), 2, length), IGNORE, dtype=np.int64)
    rows[:, 0] = eos  # padding input, never a target
    for n, messages in enumerate(conversations):
        ids, trained = tokens(messages, tokenizer)
        if len(ids) > length + 1:
            raise ExampleError(
                f"example {n + 1} is {len(ids)} tokens; the model takes "
                f"{length + 1}: shorten it or use a model with a longer context"
            )
        rows[n, 0, : len(ids) - 1] = ids[:-1]
        targets = np.array(ids[1:])
        rows[n, 1, : len(ids) - 1] = np.where(trained[1:], targets, IGNORE)
    return rows


def read_prompts(uri: str, endpoint_url: str | None = None) -> list[tuple[str, list[dict]]]:
    """(where, messages before the reply) of each row {"prompt"} or {"messages"}: what RLHF
    generates replies to."""
    found = []
    for where, row in jsonl(uri, endpoint_url):
        try:
            if not isinstance(row, dict) or not ("prompt" in row or "messages" in row):
                raise ExampleError("a row has prompt, or messages (the conversation so far)")
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            if not isinstance(messages, list):
                raise ExampleError("messages must be a list")
            reply = {"role": "assistant", "content": ""}
            found.append((where, read_row({"messages": [*messages, reply]})[:-1]))
        except ExampleError as error:
            raise ExampleError(f"{where}: {error}") from error
    if not found:
        raise ExampleError(f"{uri}: no prompts")
    return found


def encode_prompts(
    prompts: list[tuple[str, list[dict]]], tokenizer: Tokenizer, length: int
) -> np.ndarray:
    """[prompts, length]: each prompt's ids as the server reads a chat request (the conversation,
    then the assistant's header), padded with -1. A prompt must leave room for a reply."""
    rows = np.full((len(prompts), length), -1, dtype=np.int64)
    header = tokenizer.encode("<|assistant|>\n", add_special_tokens=False).ids
    for n, (where, messages) in enumerate(prompts):
        ids = tokens(messages, tokenizer)[0] + header
        if len(ids) >= length:
            raise ExampleError(
                f"{where}: the prompt is {len(ids)} tokens; the model takes {length} with the"
                " reply: shorten it or use a longer context"
            )
        rows[n, : len(ids)] = ids
    return rows
