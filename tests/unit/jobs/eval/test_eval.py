"""The evaluation job's generation and choice tasks on a tiny exported model: metrics as sacrebleu
and rouge-score compute them on the model's own greedy outputs, exact match, multiple choice by
log-likelihood, and bad rows named by line."""

import json

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from lmforge.jobs.eval import tasks
from lmforge.jobs.eval.__main__ import main
from lmforge.jobs.generate import Sampling, generate
from lmforge.operator.api.events import parse
from lmforge.operator.api.jobs import EvalConfig

ROWS = [{"prompt": "def load(", "reference": "fp, *, cls=None):"},
        {"prompt": "import ", "reference": "json"},
        {"prompt": "class Decoder", "reference": "(object):"}]  # fmt: skip


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.as_uri()


def test_generation_metrics_match_the_reference_libraries(loaded):
    model, tokenizer = loaded
    outputs = tasks.generations(model, tokenizer, ROWS, 8)
    for row, out in zip(ROWS, outputs, strict=True):
        ids = tokenizer.encode(row["prompt"], add_special_tokens=False).ids
        expected = generate(
            model, ids, Sampling(8, temperature=0), tokenizer.token_to_id("<|eos|>")
        )
        assert out == tokenizer.decode(expected)
    refs = [r["reference"] for r in ROWS]
    assert tasks.bleu(outputs, refs)["bleu"] == sacrebleu.corpus_bleu(outputs, [refs]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = (
        sum(scorer.score(r, o)["rougeL"].fmeasure for o, r in zip(outputs, refs, strict=True)) / 3
    )
    assert tasks.rouge(outputs, refs)["rougeL"] == pytest.approx(expected)
    assert tasks.exact_match(["a ", "b", "c"], ["a", "x", "c"]) == {"exactMatch": 2 / 3}
    assert tasks.bleu(refs, refs)["bleu"] == pytest.approx(100.0)


def test_multiple_choice_picks_the_most_likely_choice(loaded):
    model, tokenizer = loaded
    question = "import json\nimport "
    choices = ["json", "sys", "os"]
    with torch.no_grad():  # the choice the model itself finds most likely is the answer
        q = tokenizer.encode(question, add_special_tokens=False).ids
        scores = []
        for choice in choices:
            a = tokenizer.encode(choice, add_special_tokens=False).ids
            logp = torch.log_softmax(model(torch.tensor([q + a]))[0, :-1], -1)
            scores.append(sum(logp[len(q) - 1 + i, t].item() for i, t in enumerate(a)))
    best = max(range(3), key=scores.__getitem__)
    rows = [{"question": question, "choices": choices, "answer": best},
            {"question": question, "choices": choices, "answer": choices[(best + 1) % 3]}]  # fmt: skip
    assert tasks.multiple_choice(model, tokenizer, rows)["accuracy"] == 0.5


@pytest.mark.parametrize(("kind", "row", "message"), [
    ("bleu", {"prompt": "x"}, "line 2: missing reference"),
    ("multipleChoice", {"question": "q", "choices": ["a"], "answer": 0}, "at least two"),
    ("multipleChoice", {"question": "q", "choices": ["a", "b"], "answer": "c"}, "neither an index"),
])  # fmt: skip
def test_bad_rows_are_named(tmp_path, kind, row, message):
    good = {"prompt": "p", "reference": "r", "question": "q", "choices": ["a", "b"], "answer": 0}
    uri = write(tmp_path / "rows.jsonl", [good, row])
    with pytest.raises(ValueError, match=message):
        tasks.read_rows(uri, kind, None, None)


def test_the_job_reports_every_task_and_its_gate(model_dir, tmp_path, capsys):
    uri = write(tmp_path / "gen.jsonl", ROWS)
    mc = write(
        tmp_path / "mc.jsonl", [{"question": "import ", "choices": ["json", "sys"], "answer": 0}]
    )
    config = EvalConfig.model_validate({
        "name": "e", "modelUri": str(model_dir), "samples": [],
        "tasks": [{"name": "gen", "type": "bleu", "uri": uri, "maxNewTokens": 6},
                  {"name": "sum", "type": "rouge", "uri": uri, "maxNewTokens": 6},
                  {"name": "em", "type": "exactMatch", "uri": uri, "maxExamples": 2},
                  {"name": "mc", "type": "multipleChoice", "uri": mc}],
        "thresholds": [{"metric": "gen.bleu", "max": 100}, {"metric": "mc.accuracy", "min": 2}],
        "resultsUri": (tmp_path / "out" / "results.json").as_uri(),
    })  # fmt: skip
    (tmp_path / "config.json").write_text(config.model_dump_json(by_alias=True))
    capsys.readouterr()
    assert main(["--config", str(tmp_path / "config.json")]) == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    (done,) = parse(capsys.readouterr().out)  # what the backends read: every figure, the gate
    assert done["event"] == "done" and done["output"] == config.results_uri
    assert (done["results"], done["passed"], done["missed"]) == (
        report["results"],
        report["passed"],
        report["missed"],
    )
    assert set(report["results"]) == {"gen.bleu", "sum.rouge1", "sum.rouge2", "sum.rougeL",
                                      "em.exactMatch", "mc.accuracy", "mc.accuracyNorm"}  # fmt: skip
    assert report["details"]["em"]["examples"] == 2
    assert report["passed"] is False  # the gate, both ways: bleu under its max, accuracy not 2
    assert report["missed"] == [
        f"mc.accuracy = {report['results']['mc.accuracy']:.4g} is below the minimum 2"
    ]


def test_reward_task_scores_greedy_replies_and_references(loaded, model_dir, tmp_path):
    """The job's reward task: the reward model's score of each greedy reply at its last token,
    computed here by hand with the same Scorer; the references scored the same way."""
    from lmforge.jobs import hf
    from lmforge.jobs.model import Scorer

    model, tokenizer = loaded
    arch, tensors = hf.load(model_dir)
    torch.manual_seed(5)
    scorer = Scorer(arch)
    scorer.load_state_dict({k: v for k, v in tensors.items() if k != "lm_head.weight"}
                           | {"score.weight": torch.randn(1, arch.d_model)})  # fmt: skip
    hf.export(scorer, arch, tmp_path / "rm", tokenizer_json_path=model_dir / "tokenizer.json")
    expected = []
    with torch.no_grad():
        for row in ROWS:
            ids = tokenizer.encode(row["prompt"], add_special_tokens=False).ids
            reply = generate(
                model, ids, Sampling(6, temperature=0), tokenizer.token_to_id("<|eos|>")
            )
            ref = tokenizer.encode(row["reference"], add_special_tokens=False).ids
            mine, theirs = (scorer(torch.tensor([ids + x]), torch.tensor([len(ids + x) - 1]))
                            for x in (reply, ref))  # fmt: skip
            expected.append((mine.item(), theirs.item()))
    config = EvalConfig.model_validate({
        "name": "e", "modelUri": str(model_dir), "samples": [],
        "taskUris": {"rm": str(tmp_path / "rm")},
        "tasks": [{"name": "rm", "type": "reward", "uri": write(tmp_path / "p.jsonl", ROWS),
                   "rewardModelRef": {"name": "x"}, "maxNewTokens": 6}],
        "resultsUri": (tmp_path / "r.json").as_uri(),
    })  # fmt: skip
    (tmp_path / "config.json").write_text(config.model_dump_json(by_alias=True))
    assert main(["--config", str(tmp_path / "config.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert results["rm.reward"] == pytest.approx(sum(m for m, _ in expected) / 3, abs=1e-5)
    assert results["rm.referenceReward"] == pytest.approx(sum(t for _, t in expected) / 3, abs=1e-5)
    assert results["rm.winRate"] == round(sum(m >= t for m, t in expected) / 3, 6)
    # A model that is not a reward model is refused, naming the task.
    config.task_uris["rm"] = str(model_dir)
    (tmp_path / "config.json").write_text(config.model_dump_json(by_alias=True))
    assert main(["--config", str(tmp_path / "config.json")]) == 2
