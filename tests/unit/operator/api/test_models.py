"""The API models: defaults, rules evaluated locally, architecture presets."""

import pytest
from pydantic import ValidationError

from lmforge.operator.api.architecture import PRESETS, Architecture
from lmforge.operator.api.common import ModelSource
from lmforge.operator.api.dataset import DatasetSpec
from lmforge.operator.api.pretrainjob import PretrainJobSpec
from lmforge.operator.api.training import Training


def messages(error: ValidationError) -> list[str]:
    return [e["msg"] for e in error.errors()]


def test_wire_names_are_camel_case_and_python_names_snake_case():
    spec = DatasetSpec.model_validate(
        {"sources": [{"uri": "file:///x/*.txt"}], "packing": {"shardSizeMiB": 8}}
    )
    assert spec.packing.shard_size_mib == 8
    assert spec.wire()["packing"] == {"sequenceLength": 1024, "shardSizeMiB": 8}
    assert spec.tokenizer.train.vocab_size == 8192 and spec.tokenizer.uri is None


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"steps": 5}, None),
        ({"tokens": 5000}, None),
        ({}, "set exactly one of steps or tokens"),
        ({"steps": 5, "tokens": 5000}, "set exactly one of steps or tokens"),
    ],
)
def test_training_length_rule(fields, error):
    if error is None:
        Training.model_validate(fields)
    else:
        with pytest.raises(ValidationError) as raised:
            Training.model_validate(fields)
        assert messages(raised.value) == [error]


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ({"uri": "s3://m/"}, True),
        ({"pretrainJobRef": {"name": "a"}}, True),
        ({}, False),
        ({"pretrainJobRef": {"name": "a"}, "fineTuneRef": {"name": "b"}}, False),
    ],
)
def test_model_source_needs_exactly_one(source, ok):
    if ok:
        ModelSource.model_validate(source)
    else:
        with pytest.raises(ValidationError, match="set exactly one of pretrainJobRef"):
            ModelSource.model_validate(source)


@pytest.mark.parametrize(("processes", "ok"), [(1, False), (2, True)])
def test_fsdp_needs_more_than_one_rank(processes, ok):
    spec = {
        "datasetRef": {"name": "d"},
        "model": {"preset": "tiny"},
        "training": {"steps": 1, "parallelism": {"strategy": "fsdp"}},
        "resources": {"processesPerNode": processes},
    }
    if ok:
        PretrainJobSpec.model_validate(spec)
    else:
        with pytest.raises(ValidationError, match="fsdp shards the model"):
            PretrainJobSpec.model_validate(spec)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_resolves(preset):
    resolved = Architecture(preset=preset).resolved(vocab_size=8192)
    assert resolved.vocab_size == 8192
    assert resolved.layers == PRESETS[preset]["layers"]
    assert resolved.d_model % resolved.heads == 0 and resolved.heads % resolved.kv_heads == 0


def test_overrides_win_over_the_preset_and_sizes_are_derived():
    resolved = Architecture(preset="tiny", layers=2, context_length=64).resolved(vocab_size=300)
    assert (resolved.layers, resolved.context_length, resolved.d_model) == (2, 64, 256)
    explicit = Architecture(layers=2, d_model=192, heads=3, context_length=32).resolved(512)
    assert explicit.kv_heads == 3 and explicit.ffn_size == 512  # 8/3 * 192 rounded up to 256


def test_an_override_that_breaks_the_preset_is_refused():
    with pytest.raises(ValidationError, match="heads must be a multiple of kvHeads"):
        Architecture(preset="tiny", heads=3).resolved(vocab_size=300)


def test_vocab_smaller_than_the_tokenizer_is_refused():
    with pytest.raises(ValueError, match="vocabSize 300 is smaller than the tokenizer's 512"):
        Architecture(preset="tiny", vocab_size=300).resolved(vocab_size=512)
    with pytest.raises(ValueError, match="missing vocab_size"):
        Architecture(preset="tiny").resolved()
