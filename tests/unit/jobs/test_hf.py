"""Hugging Face interoperability: transformers runs our exports, and load(export(m)) is exact."""

import json

import fsspec
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, LlamaForCausalLM

from lmforge.jobs import hf
from lmforge.jobs.model import Transformer
from lmforge.operator.api.architecture import Architecture

VOCAB = 256


@pytest.fixture(autouse=True)
def one_thread():
    # Tensors this small gain nothing from a second thread, and on a busy CPU the threads'
    # synchronisation makes a step a hundred times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(**overrides) -> Architecture:
    # Non-default rope_theta and norm_eps, so a config that drops them gives different logits.
    shape = dict(layers=2, d_model=64, heads=4, kv_heads=2, ffn_size=128, context_length=64)
    shape |= dict(rope_theta=500000.0, norm_eps=1e-6)
    return Architecture(vocab_size=VOCAB, **(shape | overrides)).resolved()


def model(arch: Architecture) -> Transformer:
    torch.manual_seed(0)
    return Transformer(arch).eval()


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_gives_the_same_logits(tmp_path, tied):
    arch = small(tied_embeddings=tied)
    ours = model(arch)
    hf.export(ours, arch, tmp_path)
    theirs = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert theirs.config.num_key_value_heads == 2
    assert theirs.config.tie_word_embeddings is tied
    tokens = torch.randint(0, VOCAB, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), theirs(tokens).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("tied", "dtype"), [(False, torch.float32), (True, torch.float32), (False, torch.bfloat16)]
)
def test_load_of_export_is_bit_exact(tmp_path, tied, dtype):
    arch = small(tied_embeddings=tied)
    ours = model(arch).to(dtype)
    loaded_arch, state = hf.load(hf.export(ours, arch, tmp_path))
    assert loaded_arch == arch
    expected = ours.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert state[name].dtype == dtype
        assert torch.equal(state[name], tensor), name
    Transformer(loaded_arch).load_state_dict(state)  # strict: nothing missing or extra


def test_export_and_load_through_an_fsspec_uri(tmp_path):
    arch = small()
    ours = model(arch)
    uri = f"memory://{tmp_path.name}/model"
    try:
        hf.export(ours.state_dict(), arch, uri)
        loaded_arch, state = hf.load(uri)
    finally:
        fsspec.filesystem("memory").rm(f"/{tmp_path.name}", recursive=True)
    assert loaded_arch == arch
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())


def test_load_reads_sharded_weights(tmp_path):
    arch = small()
    ours = model(arch)
    hf.export(ours, arch, tmp_path)
    state = {k: v.contiguous() for k, v in ours.state_dict().items()}
    (tmp_path / "model.safetensors").unlink()
    layer_0 = {k: v for k, v in state.items() if k.startswith("model.layers.0.")}
    rest = {k: v for k, v in state.items() if k not in layer_0}
    save_file(layer_0, tmp_path / "model-00001-of-00002.safetensors")
    save_file(rest, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in layer_0}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in rest}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _, loaded = hf.load(tmp_path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_tokenizer_is_exported_for_transformers(tmp_path):
    words = ["<unk>", "def", "return", "self", "x"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    arch = small()
    out = hf.export(model(arch), arch, tmp_path / "out", tmp_path / "tokenizer.json")
    loaded = AutoTokenizer.from_pretrained(out)
    assert loaded("def x return self")["input_ids"] == [1, 4, 2, 3]
    assert loaded.model_max_length == 64


def edit_config(**changes):
    def corrupt(directory):
        config = json.loads((directory / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                config.pop(key)
            else:
                config[key] = value
        (directory / "config.json").write_text(json.dumps(config))

    return corrupt


def add_tensor(directory):
    _, state = hf.load(directory)
    save_file(state | {"model.extra.weight": torch.zeros(2)}, directory / "model.safetensors")


BAD = {
    "not llama": (edit_config(model_type="gpt2"), r"config\.json: model_type is 'gpt2'"),
    "no size": (edit_config(hidden_size=None), r"config\.json: hidden_size is missing"),
    "scaled rope": (
        edit_config(rope_parameters={"rope_type": "llama3", "factor": 8.0}),
        r"config\.json: rope_parameters\.rope_type is 'llama3'",
    ),
    "gelu": (edit_config(hidden_act="gelu"), r"config\.json: hidden_act is 'gelu'"),
    "head_dim": (edit_config(head_dim=32), r"config\.json: head_dim 32"),
    "shape": (
        edit_config(num_key_value_heads=4),
        r"model\.safetensors: tensor model\.layers\.0\.self_attn\.k_proj\.weight has shape"
        r" \(32, 64\), but the config implies \(64, 64\)",
    ),
    "no config": (lambda d: (d / "config.json").unlink(), r"config\.json: not found"),
    "bad json": (lambda d: (d / "config.json").write_text("{"), r"config\.json: not valid JSON"),
    "no weights": (
        lambda d: (d / "model.safetensors").unlink(),
        r"model\.safetensors: weights not found",
    ),
    "extra tensor": (add_tensor, r"model\.safetensors: unexpected tensors model\.extra\.weight"),
    "not safetensors": (
        lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 64),
        r"model\.safetensors: not a safetensors file",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_checkpoint_is_refused_naming_file_and_field(tmp_path, case):
    corrupt, message = BAD[case]
    arch = small()
    hf.export(model(arch), arch, tmp_path)
    corrupt(tmp_path)
    with pytest.raises(ValueError, match=message):
        hf.load(tmp_path)


@pytest.mark.parametrize(
    ("built", "claimed", "message"),
    [
        (small(), small(d_model=128), r"state dict: tensor model\.embed_tokens\.weight has"),
        (small(), small(tied_embeddings=True), r"lm_head\.weight is not the embedding"),
        (small(tied_embeddings=True), small(), r"lm_head\.weight is the embedding"),
    ],
)
def test_export_refuses_a_model_of_another_architecture(tmp_path, built, claimed, message):
    with pytest.raises(ValueError, match=message):
        hf.export(model(built), claimed, tmp_path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_of_a_tensor_are_read_alone_and_exactly(tmp_path, dtype):
    """What a rank of an FSDP gang reads of a base model: its rows of each tensor, fetched as
    one byte range each, equal to the rows of the whole tensor; two halves fetch the file's
    tensor bytes once between them, and an empty range (a rank past the last row) is empty."""
    arch = small(tied_embeddings=True)
    state = model(arch).to(dtype).state_dict()
    checkpoint = hf.Checkpoint(hf.export(state, arch, tmp_path))
    fetched = []
    cat_ranges = checkpoint.fs.cat_ranges

    def counting(paths, starts, ends):
        fetched.extend(e - s for s, e in zip(starts, ends, strict=True))
        return cat_ranges(paths, starts, ends)

    checkpoint.fs.cat_ranges = counting
    for name in checkpoint.tensors:
        rows = state[name].shape[0]
        first, second = (
            checkpoint.read(name, (0, rows // 2)),
            checkpoint.read(name, (rows // 2, rows)),
        )
        assert torch.equal(torch.cat([first, second]), state[name]) and first.dtype == dtype
    assert checkpoint.read("lm_head.weight", (3, 3)).shape == (0, arch.d_model)
    whole = sum(t.numel() * t.element_size() for k, t in state.items() if k != "lm_head.weight")
    assert sum(fetched) == whole
    assert checkpoint.read("lm_head.weight").equal(state["model.embed_tokens.weight"])  # tied
