"""lmforge's DPO and reward-model losses equal TRL's (the reference implementation) on the same
exported Hugging Face model and the same batch: TRL's own collator and `compute_loss`, fed the
token ids lmforge trains on."""

import datasets
import pytest
import torch
import transformers
import trl

from lmforge.jobs import hf
from lmforge.jobs.finetune import data, preferences
from lmforge.jobs.model import Scorer, Transformer
from lmforge.jobs.train import objectives

from .conftest import CONTEXT

ROWS = [
    {"prompt": "def double(x):", "chosen": "    return 2 * x", "rejected": "    return x"},
    {"prompt": "def name(self):", "chosen": "    return self._name", "rejected": "    pass"},
    {"prompt": "Say hi.", "responses": ["Hello there!", "hi", "No."]},
]


def rankings(pairs_only: bool):
    rows = [r for r in ROWS if "chosen" in r] if pairs_only else ROWS
    return [preferences.read_ranking(f"row {n}", r) for n, r in enumerate(rows)]


def pieces(ranking, tokenizer):
    """(prompt ids, [(response ids, its <|eos|> id)] ...) as lmforge tokenizes them."""
    out = []
    for response in ranking.responses:
        ids, trained = data.tokens(
            [*ranking.context, {"role": "assistant", "content": response}], tokenizer
        )
        start, end = trained.index(True), len(trained) - trained[::-1].index(True)
        out.append((ids[:start], ids[start:end]))  # the reply ends with <|eos|>
    return out


def text_pairs():
    """What the trainers are built with; the batches compared are given as token ids."""
    keys = ("prompt", "chosen", "rejected")
    return datasets.Dataset.from_list([{k: r[k] for k in keys} for r in ROWS[:2]])


def hf_tokenizer(folder):
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), eos_token="<|eos|>", pad_token="<|eos|>"
    )


def test_dpo_loss_equals_trl(tmp_path, base):
    base_dir, tokenizer = base
    arch, tensors = hf.load(base_dir / "model")
    reference = Transformer(arch)
    reference.load_state_dict(tensors)
    torch.manual_seed(7)
    policy = Transformer(arch)  # another model, with sharper outputs: the log-ratios are not ~0
    with torch.no_grad():
        for weight in policy.parameters():
            weight.mul_(4 if weight.dim() == 2 else 1)
    hf.export(policy, arch, tmp_path / "policy", tokenizer_json_path=base_dir / "model" / "tokenizer.json")  # fmt: skip
    ours = rankings(pairs_only=True)
    rows = torch.from_numpy(preferences.encode(ours, tokenizer, CONTEXT - 1))
    with torch.no_grad():
        expected = objectives.Dpo(reference.eval(), beta=0.1)(policy.eval(), rows)[0]

    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "policy")
    reference_hf = transformers.LlamaForCausalLM.from_pretrained(base_dir / "model")
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=reference_hf,
        args=trl.DPOConfig(
            output_dir=str(tmp_path / "trl"),
            beta=0.1,
            report_to="none",
            use_cpu=True,
            loss_type=["sigmoid"],
        ),
        train_dataset=text_pairs(),
        processing_class=hf_tokenizer(base_dir / "model"),
    )
    examples = []
    for ranking in ours:
        (prompt, chosen), (_, rejected) = pieces(ranking, tokenizer)
        examples.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    batch = trainer.data_collator(examples)
    model.eval()
    with torch.no_grad():
        got = trainer.compute_loss(model, batch)
    print(f"DPO loss: lmforge {expected.item():.8f}, TRL {got.item():.8f}")
    # Each side sums ~100 float32 token log-probabilities of magnitude ~6 in its own order:
    # log-ratios agree to ~1e-4, the loss (beta 0.1) to a few 1e-5.
    assert abs(got.item() - expected.item()) < 5e-5, (got.item(), expected.item())
    assert expected.item() != pytest.approx(0.6931, abs=1e-3)  # not the trivial log 2


def test_reward_loss_equals_trl(tmp_path, base):
    base_dir, tokenizer = base
    arch, tensors = hf.load(base_dir / "model")
    torch.manual_seed(3)
    scorer = Scorer(arch)
    tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    scorer.load_state_dict(tensors | {"score.weight": torch.randn(1, arch.d_model)})
    hf.export(scorer, arch, tmp_path / "rm", tokenizer_json_path=base_dir / "model" / "tokenizer.json")  # fmt: skip
    ours = rankings(pairs_only=True)
    rows = torch.from_numpy(preferences.encode(ours, tokenizer, CONTEXT - 1))
    with torch.no_grad():
        expected = objectives.Reward()(scorer.eval(), rows)[0]

    model = transformers.LlamaForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.token_to_id(
        "<|eos|>"
    )
    trainer = trl.RewardTrainer(
        model=model,
        args=trl.RewardConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True),
        train_dataset=text_pairs(),
        processing_class=hf_tokenizer(base_dir / "model"),
    )
    examples = []
    for ranking in ours:  # the text up to the reply's last token: its score is read there
        (prompt, chosen), (_, rejected) = pieces(ranking, tokenizer)
        examples.append({"chosen_ids": prompt + chosen[:-1], "rejected_ids": prompt + rejected[:-1]})  # fmt: skip
    batch = trainer.data_collator(examples)
    model.eval()
    with torch.no_grad():
        got = trainer.compute_loss(model, batch)
    print(f"reward loss: lmforge {expected.item():.8f}, TRL {got.item():.8f}")
    assert abs(got.item() - expected.item()) < 1e-5, (got.item(), expected.item())


def test_listwise_rows_score_like_the_hugging_face_model(tmp_path, base):
    """A ranking of three: each response's score equals LlamaForSequenceClassification's."""
    base_dir, tokenizer = base
    arch, tensors = hf.load(base_dir / "model")
    scorer = Scorer(arch)
    tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    scorer.load_state_dict(tensors | {"score.weight": torch.randn(1, arch.d_model)})
    hf.export(scorer, arch, tmp_path / "rm", tokenizer_json_path=base_dir / "model" / "tokenizer.json")  # fmt: skip
    (ranking,) = rankings(pairs_only=False)[2:]
    rows = torch.from_numpy(preferences.encode([ranking], tokenizer, CONTEXT - 1))
    inputs, targets = objectives.split(rows)
    with torch.no_grad():
        ours = scorer.eval()(inputs, objectives.last_target(targets))
    model = transformers.LlamaForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    for n, (prompt, reply) in enumerate(pieces(ranking, tokenizer)):
        with torch.no_grad():
            theirs = model(torch.tensor([prompt + reply[:-1]])).logits[0, 0]
        assert abs(theirs.item() - ours[n].item()) < 1e-5
