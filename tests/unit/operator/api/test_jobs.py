"""The jobs' configs: a training config is of its method's class, and a bad one fails before
any compute, naming the field to change."""

import json

import pytest
from pydantic import ValidationError

from lmforge.operator.api.jobs import (
    ConfigError,
    DpoConfig,
    PretrainConfig,
    SftConfig,
    read_train_config,
)

COMMON = {
    "name": "t",
    "checkpointUri": "file:///c",
    "outputUri": "file:///o",
    "processesPerNode": 2,
}


def make(**training) -> PretrainConfig:
    return PretrainConfig.model_validate({
        **COMMON, "datasetUri": "file:///d", "architecture": {"preset": "tiny", "contextLength": 128},
        "training": {"steps": 10, "globalBatchTokens": 4096, "microBatch": 4, **training},
    })  # fmt: skip


def resolve(config, world, length, vocab):
    return config.resolve(config.architecture, world, length, vocab)


def test_a_good_plan():
    resolved = resolve(make(), world=2, length=128, vocab=1000)
    assert (resolved.steps, resolved.accumulation, resolved.architecture.vocab_size) == (
        10,
        4,
        1000,
    )
    assert resolve(make(steps=None, tokens=40960), 2, 128, 1000).steps == 10


def written(**fields) -> str:
    """A training config as the backends write it."""
    return json.dumps({**COMMON, "training": {"steps": 1}, **fields})


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        (
            {"method": "pretrain", "datasetUri": "file:///d", "architecture": {"preset": "tiny"}},
            PretrainConfig,
        ),
        ({"method": "sft", "baseModelUri": "file:///m", "examplesUri": "file:///e"}, SftConfig),
        (
            {
                "method": "dpo",
                "baseModelUri": "file:///m",
                "preferencesUri": "file:///p",
                "beta": 0.2,
            },
            DpoConfig,
        ),
    ],
)
def test_a_config_is_of_its_methods_class(fields, kind):
    config = read_train_config(written(**fields))
    assert type(config) is kind and config.data_field.startswith("spec.")


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "sft", "baseModelUri": "file:///m"},  # no examples to read
        {"method": "sft", "baseModelUri": "file:///m", "examplesUri": "e", "preferencesUri": "p"},
        {"method": "grpo", "baseModelUri": "file:///m", "promptsUri": "file:///p"},  # no scorer
        {"method": "ppo", "baseModelUri": "file:///m"},
        {"datasetUri": "file:///d", "architecture": {"preset": "tiny"}},  # no method
    ],
)
def test_a_config_holds_what_its_method_reads_and_nothing_else(fields):
    with pytest.raises(ValidationError):
        read_train_config(written(**fields))


# fmt: off
BAD = [
    ({}, 3, 128, 1000, "world size 3 does not match resources.nodes (1) x resources.processesPerNode (2)"),
    ({}, 2, 100, 1000, "training.globalBatchTokens (4096) must be a multiple of the dataset's sequence length (100)"),
    ({"microBatch": 3}, 2, 128, 1000, "32 sequences per step, not a multiple of training.microBatch (3) x 2 ranks"),
    ({}, 2, 256, 1000, "model.contextLength (128) is shorter than the dataset's sequences (256 tokens"),
    ({"steps": None, "tokens": 100}, 2, 128, 1000, "training.tokens (100) is less than one step's batch"),
    ({"precision": "fp16", "parallelism": {"strategy": "fsdp"}}, 2, 128, 1000, "training.precision: fp16 is not supported with fsdp"),
]
# fmt: on


@pytest.mark.parametrize(("training", "world", "length", "vocab", "message"), BAD)
def test_bad_configuration_names_the_field(training, world, length, vocab, message):
    with pytest.raises(ConfigError) as raised:
        resolve(make(**training), world, length, vocab)
    assert message in str(raised.value)


def test_vocabulary_smaller_than_the_tokenizer():
    config = make()
    config = config.model_copy(
        update={"architecture": config.architecture.model_copy(update={"vocab_size": 300})}
    )
    with pytest.raises(ConfigError, match="vocabSize 300 is smaller than the tokenizer's 1000"):
        resolve(config, 2, 128, 1000)
