"""Preference data for reward models and DPO: each prompt with k >= 2 responses ranked best to
worst, as /v1/feedback records them.

A row is {"prompt", "responses": [best, ..., worst]} or {"prompt", "chosen", "rejected"} (k = 2);
"messages" (a conversation before the reply) may stand in for "prompt". A file, or a folder of
jsonl files (a Deployment's feedback). Each response is rendered with the chat template after the
prompt, as SFT renders examples, into rows of shape [K, 2, L] (K the longest ranking): for each
response its token ids and targets, -100 except on the response and its <|eos|>. A ranking
shorter than K is padded with responses whose targets are all -100.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from lmforge.jobs.finetune.data import IGNORE, ExampleError, read_row, tokens
from lmforge.jobs.storage import filesystem, jsonl


@dataclass(frozen=True)
class Ranking:
    where: str
    context: list[dict[str, str]]
    """The conversation before the reply."""
    responses: list[str]
    """Best first."""


def read(uri: str, endpoint_url: str | None = None) -> list[Ranking]:
    """Every row of the file, or of every *.jsonl under the folder, checked; errors name the
    line and the field."""
    fs, path = filesystem(uri, endpoint_url)
    if fs.isdir(path):
        files = sorted(fs.unstrip_protocol(p) for p in fs.glob(f"{path.rstrip('/')}/**/*.jsonl"))
    else:
        files = [uri]
    rankings = []
    for file in files:
        for where, row in jsonl(file, endpoint_url):
            try:
                rankings.append(read_ranking(where, row))
            except ExampleError as error:
                raise ExampleError(f"{where}: {error}") from error
    if not rankings:
        raise ExampleError(f"{uri}: no preference rows")
    return rankings


def read_ranking(where: str, row: dict) -> Ranking:
    if not isinstance(row, dict):
        raise ExampleError("a row is a JSON object")
    if "responses" in row:
        responses, field = row["responses"], "responses"
    elif "chosen" in row and "rejected" in row:
        responses, field = [row["chosen"], row["rejected"]], "chosen/rejected"
    else:
        raise ExampleError("a row has responses (best first), or chosen and rejected")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise ExampleError(f"{field}: a list of strings")
    if len(responses) < 2:
        raise ExampleError(f"{field}: {len(responses)} response; a ranking needs at least 2")
    for i, response in enumerate(responses):
        if response in responses[:i]:
            raise ExampleError(
                f"{field}: response {i + 1} is the same text as response "
                f"{responses.index(response) + 1}: a tie says nothing about which is better;"
                " drop one"
            )
    # The context is the conversation before the reply: checked as SFT checks its messages.
    if "messages" in row:
        if not isinstance(row["messages"], list):
            raise ExampleError("messages must be a list")
        reply = {"role": "assistant", "content": ""}
        context = read_row({"messages": [*row["messages"], reply]})[:-1]
    elif isinstance(row.get("prompt"), str):
        context = [{"role": "user", "content": row["prompt"]}]
    else:
        raise ExampleError("prompt: a string (or messages: the conversation before the reply)")
    return Ranking(where, context, responses)


def encode(rankings: list[Ranking], tokenizer: Tokenizer, length: int) -> np.ndarray:
    """[rows, K, 2, length] of input ids and targets (see the module's docstring)."""
    eos = tokenizer.token_to_id("<|eos|>")
    k = max(len(r.responses) for r in rankings)
    rows = np.full((len(rankings), k, 2, length), IGNORE, dtype=np.int64)
    rows[:, :, 0] = eos
    for n, ranking in enumerate(rankings):
        for i, response in enumerate(ranking.responses):
            messages = [*ranking.context, {"role": "assistant", "content": response}]
            ids, trained = tokens(messages, tokenizer)
            if len(ids) > length + 1:
                raise ExampleError(
                    f"{ranking.where}: response {i + 1} with its prompt is {len(ids)} tokens;"
                    f" the model takes {length + 1}: shorten it or use a longer context"
                )
            rows[n, i, 0, : len(ids) - 1] = ids[:-1]
            rows[n, i, 1, : len(ids) - 1] = np.where(trained[1:], ids[1:], IGNORE)
    return rows
