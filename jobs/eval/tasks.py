"""The evaluation tasks besides perplexity, on jsonl rows: BLEU (sacrebleu) and ROUGE (rouge-score)
of greedy generations against references, exact match, and multiple choice by log-likelihood.

Rows: {"prompt", "reference"} for bleu, rouge and exactMatch; {"question", "choices", "answer"}
for multipleChoice, where answer is the index of the right choice or its text; {"prompt"} for
reward, the mean score a reward model gives the greedy replies (and the references, if given).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from lmforge.jobs.generate import EOS, Sampling, generate
from lmforge.jobs.model import Scorer, Transformer
from lmforge.jobs.storage import jsonl

FIELDS = {
    "bleu": ("prompt", "reference"),
    "rouge": ("prompt", "reference"),
    "exactMatch": ("prompt", "reference"),
    "multipleChoice": ("question", "choices", "answer"),
    "reward": ("prompt",),
}


def read_rows(uri: str, kind: str, limit: int | None, endpoint_url: str | None) -> list[dict]:
    """The task's rows, checked: a bad row is an error naming its line and field."""
    rows = []
    for where, row in jsonl(uri, endpoint_url):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a row is a JSON object")
        missing = [f for f in FIELDS[kind] if f not in row]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)} (a {kind} row has "
                             f"{', '.join(FIELDS[kind])})")  # fmt: skip
        if kind == "multipleChoice":
            _answer_index(row, where)
        rows.append(row)
        if limit is not None and len(rows) == limit:
            break
    if not rows:
        raise ValueError(f"{uri}: no rows")
    return rows


def _answer_index(row: dict, where: str) -> int:
    choices, answer = row["choices"], row["answer"]
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError(f"{where}: choices must be a list of at least two")
    if isinstance(answer, int) and 0 <= answer < len(choices):
        return answer
    if isinstance(answer, str) and answer in choices:
        return choices.index(answer)
    raise ValueError(f"{where}: answer {answer!r} is neither an index of choices nor one of them")


def generations(
    model: Transformer, tokenizer: Tokenizer, rows: list[dict], max_new_tokens: int
) -> list[str]:
    """Greedy continuations of each prompt (what the server answers at temperature 0)."""
    replies = greedy(model, tokenizer, rows, max_new_tokens)
    return [tokenizer.decode(reply) for _, reply in replies]


def greedy(
    model: Transformer, tokenizer: Tokenizer, rows: list[dict], max_new_tokens: int
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, greedy reply ids) of each row; a long prompt keeps its end."""
    eos, context = tokenizer.token_to_id(EOS), model.arch.context_length
    out = []
    for row in rows:
        ids = tokenizer.encode(row["prompt"], add_special_tokens=False).ids
        ids = ids[-max(1, context - max_new_tokens) :]
        out.append((ids, generate(model, ids, Sampling(max_new_tokens, 0.0), eos)))
    return out


def reward(
    model: Transformer, scorer: Scorer, tokenizer: Tokenizer, rows: list[dict], max_new_tokens: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """The reward model's mean score of the greedy replies, read at each reply's last token as it
    was trained; with references, theirs too and how often the reply scores at least as high."""
    context = scorer.arch.context_length

    def score(ids: list[int]) -> float:
        ids = ids[-context:]
        return float(scorer(torch.tensor([ids]), torch.tensor([len(ids) - 1]))[0])

    replies = greedy(model, tokenizer, rows, max_new_tokens)
    scores = [score(prompt + reply) for prompt, reply in replies]
    metrics = {"reward": sum(scores) / len(scores)}
    if all("reference" in r for r in rows):
        encode = tokenizer.encode
        theirs = [score(p + encode(r["reference"], add_special_tokens=False).ids)
                  for (p, _), r in zip(replies, rows, strict=True)]  # fmt: skip
        metrics["referenceReward"] = sum(theirs) / len(theirs)
        metrics["winRate"] = sum(a >= b for a, b in zip(scores, theirs, strict=True)) / len(rows)
    first = [{"prompt": r["prompt"], "output": tokenizer.decode(reply), "reward": s}
             for r, (_, reply), s in zip(rows[:5], replies, scores, strict=False)]  # fmt: skip
    return metrics, {"examples": len(rows), "first": first}


def bleu(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    import sacrebleu

    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score}


def rouge(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    scores = [scorer.score(ref, hyp) for hyp, ref in zip(hypotheses, references, strict=True)]
    return {k: sum(s[k].fmeasure for s in scores) / len(scores) for k in kinds}


def exact_match(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    hits = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references, strict=True))
    return {"exactMatch": hits / len(references)}


@torch.no_grad()
def multiple_choice(model: Transformer, tokenizer: Tokenizer, rows: list[dict]) -> dict:
    """The choice with the highest log-likelihood after the question (summed over its tokens,
    and per token for `accuracyNorm`), against the answer."""
    hits = hits_norm = 0
    for i, row in enumerate(rows):
        question = tokenizer.encode(row["question"], add_special_tokens=False).ids
        scores = []
        for choice in row["choices"]:
            answer = tokenizer.encode(choice, add_special_tokens=False).ids
            ids = (question + answer)[-model.arch.context_length :]
            n = min(len(answer), len(ids) - 1)
            logits = model(torch.tensor([ids[:-1]]))[0, -n:].float()
            logp = F.log_softmax(logits, -1).gather(1, torch.tensor(ids[-n:])[:, None]).sum()
            scores.append((float(logp), float(logp) / max(n, 1)))
        right = _answer_index(row, f"row {i + 1}")
        hits += max(range(len(scores)), key=lambda k: scores[k][0]) == right
        hits_norm += max(range(len(scores)), key=lambda k: scores[k][1]) == right
    return {"accuracy": hits / len(rows), "accuracyNorm": hits_norm / len(rows)}


def run(
    kind: str, model: Transformer, tokenizer: Tokenizer, rows: list[dict], max_new_tokens: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, details) of one task."""
    if kind == "multipleChoice":
        return multiple_choice(model, tokenizer, rows), {"examples": len(rows)}
    hypotheses = generations(model, tokenizer, rows, max_new_tokens)
    references = [r["reference"] for r in rows]
    score = {"bleu": bleu, "rouge": rouge, "exactMatch": exact_match}[kind]
    examples = [{"prompt": r["prompt"], "reference": r["reference"], "output": h}
                for r, h in zip(rows[:5], hypotheses, strict=False)]  # fmt: skip
    return score(hypotheses, references), {"examples": len(rows), "first": examples}
