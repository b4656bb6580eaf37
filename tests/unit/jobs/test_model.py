"""The transformer: Hugging Face names, causality, initialisation, and that it learns."""

import math

import pytest
import torch

from lmforge.jobs.model import Transformer
from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.sizing import parameter_shapes

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
    shape = dict(layers=2, d_model=64, heads=4, kv_heads=2, ffn_size=128, context_length=32)
    return Architecture(vocab_size=VOCAB, **(shape | overrides)).resolved()


@pytest.mark.parametrize("tied", [False, True])
def test_state_dict_has_llama_names_and_shapes(tied):
    state = Transformer(small(tied_embeddings=tied)).state_dict()
    expected = parameter_shapes(small(tied_embeddings=tied))
    if tied:  # saved under both names, as LlamaForCausalLM's state_dict does
        expected["lm_head.weight"] = expected["model.embed_tokens.weight"]
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_tied_embeddings_share_one_tensor():
    model = Transformer(small(tied_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_logits_at_a_position_do_not_depend_on_later_tokens():
    torch.manual_seed(0)
    model = Transformer(small()).eval()
    tokens = torch.randint(0, VOCAB, (1, 16))
    changed = tokens.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert torch.equal(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_initial_loss_is_that_of_a_uniform_guess():
    torch.manual_seed(0)
    model = Transformer(small())
    tokens = torch.randint(0, VOCAB, (4, 32))
    logits, loss = model(tokens, tokens)
    assert logits.shape == (4, 32, VOCAB)
    assert loss.item() == pytest.approx(math.log(VOCAB), abs=0.05)


def test_residual_projections_start_smaller():
    torch.manual_seed(0)
    arch = small(d_model=256, ffn_size=256, layers=8)
    block = Transformer(arch).model.layers[0]
    assert block.self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for weight in (block.self_attn.o_proj.weight, block.mlp.down_proj.weight):
        assert weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)


def test_loss_ignores_targets_of_minus_100():
    torch.manual_seed(0)
    model = Transformer(small())
    tokens = torch.randint(0, VOCAB, (2, 8))
    masked = tokens.clone()
    masked[:, :4] = -100
    logits, loss = model(tokens, masked)
    expected = torch.nn.functional.cross_entropy(
        logits[:, 4:].flatten(0, 1), tokens[:, 4:].flatten()
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_loss_falls_when_training_on_one_batch(tied):
    torch.manual_seed(0)
    model = Transformer(small(tied_embeddings=tied))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.randint(0, VOCAB, (4, 33))
    losses = []
    for _ in range(30):
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_meta_built_model_initialises_after_to_empty():
    # The FSDP path: build without memory, shard, allocate, then initialise in place.
    with torch.device("meta"):
        model = Transformer(small())
    model.to_empty(device="cpu")
    model.init_weights()
    fresh = Transformer(small())
    assert torch.equal(model.rope_cos, fresh.rope_cos)
    assert torch.equal(model.rope_sin, fresh.rope_sin)
    assert model.model.layers[0].input_layernorm.weight.eq(1).all()
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_sequence_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="longer than the context length 32"):
        Transformer(small())(torch.zeros(1, 33, dtype=torch.long))


def test_architecture_without_vocab_size_is_refused():
    with pytest.raises(ValueError, match="missing vocab_size"):
        Transformer(Architecture(preset="tiny"))
