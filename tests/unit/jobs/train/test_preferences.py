"""Ranked preferences on the trainer: the rows, the ranking losses, a reward model (Bradley-Terry
or Plackett-Luce) and DPO, under torchrun with 2 processes, on the standard-library task."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from lmforge.jobs import hf
from lmforge.jobs.finetune import data, preferences
from lmforge.jobs.model import Scorer, Transformer
from lmforge.jobs.storage import jsonl
from lmforge.jobs.train import objectives

from .conftest import CONTEXT, events, killed_and_resumed_equals_straight, train


@pytest.fixture(scope="module")
def pairs(base, tmp_path_factory):
    """stdlib-tasks preference pairs (real body over a corrupted one) that fit the context."""
    _, tokenizer = base
    out = tmp_path_factory.mktemp("preferences") / "pairs.jsonl"
    rows = (row for _, row in jsonl("stdlib-tasks://functions/preferences.jsonl"))

    def fits(row):
        ranking = preferences.read_ranking("", row)
        replies = ([*ranking.context, {"role": "assistant", "content": r}]
                   for r in ranking.responses)  # fmt: skip
        return all(len(data.tokens(m, tokenizer)[0]) <= CONTEXT for m in replies)

    chosen = list(itertools.islice(filter(fits, rows), 160))
    out.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return out


def preference_config(tmp, base_dir, data, method, steps=40, **fields) -> dict:
    return {
        "name": method,
        "method": method,
        "baseModelUri": (base_dir / "model").as_uri(),
        "preferencesUri": data.as_uri(),
        "validationFraction": 0.2,
        "training": {"steps": steps, "globalBatchTokens": CONTEXT * 8, "microBatch": 2,
                     "schedule": {"warmupSteps": 2}, "optimizer": {"lr": 0.002},
                     "checkpoint": {"everySteps": 5, "keep": 2},
                     "validation": {"everySteps": steps // 2, "batches": 4}},
        "checkpointUri": (tmp / "checkpoints").as_uri(),
        "outputUri": (tmp / "model").as_uri(),
        "processesPerNode": 2,
        **fields,
    }  # fmt: skip


def test_bradley_terry_and_plackett_luce_by_hand():
    # Two rankings: three responses, and two (padded to three).
    scores = torch.tensor([[2.0, 0.5, 1.0], [0.3, 1.3, 9.0]])
    present = torch.tensor([[True, True, True], [True, True, False]])
    loss, accuracy, margin = objectives.ranked_pairs(scores, present)
    differences = [2.0 - 0.5, 2.0 - 1.0, 0.5 - 1.0, 0.3 - 1.3]
    expected = sum(-math.log(1 / (1 + math.exp(-d))) for d in differences) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == pytest.approx(2 / 4)
    assert margin.item() == pytest.approx(sum(differences) / 4)
    e = math.exp
    choices = [  # the best among all, then the next among the rest; the last is no choice
        2.0 - math.log(e(2.0) + e(0.5) + e(1.0)),
        0.5 - math.log(e(0.5) + e(1.0)),
        0.3 - math.log(e(0.3) + e(1.3)),
    ]
    listwise = objectives.plackett_luce(scores, present)
    assert listwise.item() == pytest.approx(-sum(choices) / 3, rel=1e-6)
    # With two responses Plackett-Luce is Bradley-Terry.
    two = torch.tensor([[True, True, False]] * 2)
    bt = objectives.ranked_pairs(scores, two)[0]
    assert objectives.plackett_luce(scores, two).item() == pytest.approx(bt.item(), rel=1e-6)


def test_rows_hold_each_response_and_the_score_reads_its_last_token(base):
    _, tokenizer = base
    ranking = preferences.read_ranking(
        "row", {"prompt": "def f(x):", "responses": ["    return x", "    pass", "    x"]}
    )
    short = preferences.read_ranking("row", {"prompt": "def g():", "chosen": "a", "rejected": "b"})
    rows = preferences.encode([ranking, short], tokenizer, CONTEXT - 1)
    assert rows.shape == (2, 3, 2, CONTEXT - 1)
    for i, response in enumerate(ranking.responses):
        targets = rows[0, i, 1]
        text = tokenizer.decode(targets[targets != -100].tolist(), skip_special_tokens=False)
        assert text == response + "<|eos|>"
    assert (rows[1, 2, 1] == -100).all()  # the padding slot of a ranking of two
    present = (torch.from_numpy(rows)[:, :, 1] != -100).any(-1)
    assert present.tolist() == [[True, True, True], [True, True, False]]
    _, targets = objectives.split(torch.from_numpy(rows))
    last = objectives.last_target(targets)
    for n, row in enumerate(targets):  # the position whose target is <|eos|>
        if present.flatten()[n]:
            assert tokenizer.id_to_token(int(row[last[n]])) == "<|eos|>"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "responses": ["only one"]}, "1 response; a ranking needs at least 2"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "response 2 is the same text"),
        ({"prompt": "p", "responses": ["a", "b", "a"]}, "response 3 is the same text as resp"),
        ({"chosen": "a", "rejected": "b"}, "prompt: a string"),
        ({"prompt": "p", "response": "a"}, "responses \\(best first\\), or chosen and rejected"),
        ({"prompt": "p", "responses": ["a", 3]}, "responses: a list of strings"),
        ({"messages": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}, "role"),
    ],
)
def test_bad_preference_rows_are_named(tmp_path, row, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}) + "\n")
    with path.open("a") as out:
        out.write(json.dumps(row) + "\n")
    with pytest.raises(preferences.ExampleError, match=f"p.jsonl line 2: .*{message}"):
        preferences.read(path.as_uri())


def test_too_long_a_response_is_named(base):
    _, tokenizer = base
    ranking = preferences.read_ranking("f line 7", {"prompt": "p", "chosen": "a " * 300,
                                                    "rejected": "b"})  # fmt: skip
    with pytest.raises(preferences.ExampleError, match="f line 7: response 1 with its prompt"):
        preferences.encode([ranking], tokenizer, CONTEXT - 1)


def test_a_folder_of_feedback_files_is_read(tmp_path):
    for n in range(3):
        day = tmp_path / "preferences" / f"day{n}"
        day.mkdir(parents=True)
        row = {"prompt": f"p{n}", "chosen": "a", "rejected": "b", "model": "m", "id": str(n)}
        (day / "fb.jsonl").write_text(json.dumps(row) + "\n")
    rankings = preferences.read((tmp_path / "preferences").as_uri())
    assert [r.context[0]["content"] for r in rankings] == ["p0", "p1", "p2"]


@pytest.mark.parametrize("loss", ["bradleyTerry", "plackettLuce"])
def test_reward_model_ranks_held_out_pairs_above_chance(tmp_path, base, pairs, loss):
    base_dir, _ = base
    cfg = preference_config(tmp_path, base_dir, pairs, "reward", rankingLoss=loss)
    result = train(tmp_path, cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    first, last = events(tmp_path, "validation")
    assert last["accuracy"] >= 0.75, (first, last)  # 32 held-out pairs; chance is 0.5
    assert last["loss"] < math.log(2)  # what scoring every response alike gives
    # Exported as Hugging Face's LlamaForSequenceClassification, and loads back as a Scorer.
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    arch, tensors = hf.load(tmp_path / "model")
    assert "score.weight" in tensors and "lm_head.weight" not in tensors
    Scorer(arch).load_state_dict(tensors)


def test_dpo_raises_the_held_out_margin(tmp_path, base, pairs):
    base_dir, _ = base
    cfg = preference_config(tmp_path, base_dir, pairs, "dpo", beta=0.1)
    result = train(tmp_path, cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    middle, last = events(tmp_path, "validation")
    # nats of log-probability, over the reference's on the same held-out pairs
    assert last["margin"] > last["referenceMargin"] + 5, (middle, last)
    assert last["margin"] > middle["margin"], (middle, last)
    assert last["accuracy"] >= 0.75
    steps = [e["loss"] for e in events(tmp_path, "step")]
    assert steps[0] == pytest.approx(math.log(2), abs=1e-3)  # the policy starts as the reference
    assert np.mean(steps[-5:]) < math.log(2) - 0.2


def test_dpo_killed_and_resumed_equals_uninterrupted(tmp_path, base, pairs):
    base_dir, _ = base
    killed_and_resumed_equals_straight(
        tmp_path, lambda d: preference_config(d, base_dir, pairs, "dpo", steps=12)
    )


@pytest.fixture(scope="module")
def reward_model(base, pairs, tmp_path_factory):
    base_dir, _ = base
    out = tmp_path_factory.mktemp("rm")
    assert train(out, preference_config(out, base_dir, pairs, "reward")).returncode == 0
    return out / "model"


def grpo_config(tmp, base_dir, prompts, reward_model, steps=60) -> dict:
    cfg = preference_config(tmp, base_dir, prompts, "grpo", steps=steps)
    cfg["training"]["validation"] = {"everySteps": 10, "batches": 4}
    cfg["training"]["globalBatchTokens"] = CONTEXT * 4
    cfg["training"]["optimizer"] = {"lr": 0.01}
    return cfg | {
        "preferencesUri": None,
        "promptsUri": prompts.as_uri(),
        "rewardModelUri": reward_model.as_uri(),
        "validationFraction": 0.2,
        "rl": {"samplesPerPrompt": 4, "maxNewTokens": 16, "klCoef": 0.01},
    }


def test_grpo_raises_the_reward_of_held_out_replies(tmp_path, base, pairs, reward_model):
    base_dir, _ = base
    prompts = tmp_path / "prompts.jsonl"
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    result = train(tmp_path, grpo_config(tmp_path, base_dir, prompts, reward_model))
    assert result.returncode == 0, result.stderr[-3000:]
    validations = [e["reward"] for e in events(tmp_path, "validation")]
    steps = [e["reward"] for e in events(tmp_path, "step")]
    assert validations[-1] > validations[0] + 0.5, validations
    assert np.mean(steps[-5:]) > np.mean(steps[:5]), steps
    assert all(e["kl"] >= 0 for e in events(tmp_path, "step"))


def test_a_reference_or_reward_model_that_does_not_match_is_refused(tmp_path, base, pairs):
    """Before any compute: fewer prompts than ranks, a DPO reference of another shape, a GRPO
    reward model with another tokenizer, a reward model where a language model belongs, and a
    base model whose tokenizer lacks the chat template's <|eos|>; each names its field."""
    base_dir, tokenizer = base
    arch, _ = hf.load(base_dir / "model")
    wider = arch.model_copy(update={"d_model": 128, "ffn_size": 256})
    hf.export(Transformer(wider), wider, tmp_path / "wide",
              tokenizer_json_path=base_dir / "model" / "tokenizer.json")  # fmt: skip
    other = tmp_path / "other-tokenizer"
    other.mkdir()
    (other / "tokenizer.json").write_text(tokenizer.to_str().replace('"<|eos|>"', '"<|end|>"'))
    for name, folder in (("rm", other), ("rm-same", base_dir / "model"), ("lm", other)):
        model = Transformer(arch) if name == "lm" else Scorer(arch)
        hf.export(model, arch, tmp_path / name, tokenizer_json_path=folder / "tokenizer.json")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "def f():"}) + "\n")
    cases = [
        (grpo_config(tmp_path / "d", base_dir, prompts, tmp_path / "rm"),
         "spec.prompts: split 'train' has 1 sequences, fewer than 2 ranks"),
        (preference_config(tmp_path / "a", base_dir, pairs, "dpo",
                           referenceUri=(tmp_path / "wide").as_uri()), "spec.dpo.reference"),
        (grpo_config(tmp_path / "b", base_dir, pairs, tmp_path / "rm"),
         "spec.rewardModelRef: its tokenizer differs"),
        (preference_config(tmp_path / "c", base_dir, pairs, "dpo") | {
            "baseModelUri": (tmp_path / "rm-same").as_uri()}, "spec.baseModel: a reward model"),
        (preference_config(tmp_path / "e", base_dir, pairs, "reward") | {
            "baseModelUri": (tmp_path / "lm").as_uri()}, "spec.baseModel: its tokenizer has no"),
    ]  # fmt: skip
    for n, (cfg, message) in enumerate(cases):
        result = train(tmp_path / str(n), cfg)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert not events(tmp_path / str(n), "step")


def test_grpo_scores_each_reply_at_its_last_token():
    """With or without the <|eos|> that ended it, and when the reply fills the context."""
    eos, length = 0, 8
    prompts, replies = [[5, 6], [5, 6], [5]], [[7, 8, eos], [7, 8], [9] * 7]
    scored, ends = objectives._scored(prompts, replies, eos, length)
    assert ends.tolist() == [3, 3, 7]
    assert [int(scored[n, e]) for n, e in enumerate(ends)] == [8, 8, 9]
    assert scored[0].tolist() == scored[1].tolist() == [5, 6, 7, 8, 0, 0, 0, 0]
