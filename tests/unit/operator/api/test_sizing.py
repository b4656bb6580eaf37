"""Parameter counts and FLOPs from the shape agree with the model and with hand counts."""

import subprocess
import sys

import pytest
import torch

from lmforge.jobs.model import Transformer
from lmforge.operator.api.architecture import PRESETS, Architecture
from lmforge.operator.api.sizing import (
    layer_parameter_count,
    parameter_count,
    training_flops_per_token,
)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_parameter_count_is_the_models(preset, tied):
    arch = Architecture(preset=preset, vocab_size=32000, tied_embeddings=tied)
    with torch.device("meta"):  # no memory, so the 1b preset is as fast as tiny
        model = Transformer(arch)
    assert parameter_count(arch) == sum(p.numel() for p in model.parameters())


def test_1b_preset_with_llama_3_vocabulary_is_llama_3_2_1b():
    arch = Architecture(preset="1b", vocab_size=128256, tied_embeddings=True)
    assert parameter_count(arch) == 1_235_814_400  # Llama 3.2 1B's published count


# tiny: 4 layers, d_model 256, 4 heads of 64, 2 kv heads (k/v width 128), ffn 768.
TINY_LAYER = 2 * 256 * 256 + 2 * 128 * 256 + 3 * 768 * 256 + 2 * 256  # = 786_944
TINY_EMBEDDING = 32000 * 256


def test_tiny_counts_by_hand():
    arch = Architecture(preset="tiny", vocab_size=32000)
    assert layer_parameter_count(arch) == TINY_LAYER == 786_944
    assert parameter_count(arch) == 4 * TINY_LAYER + 2 * TINY_EMBEDDING + 256 == 19_532_032


@pytest.mark.parametrize("tied", [False, True])
def test_flops_per_token_is_6n_plus_attention(tied):
    # The input embedding is a lookup, not a matmul; the output projection is one either way,
    # so tying changes the parameter count but not the FLOPs.
    arch = Architecture(preset="tiny", vocab_size=32000, tied_embeddings=tied)
    matmul_parameters = 4 * TINY_LAYER + 256 + TINY_EMBEDDING  # = 11_340_032
    attention = 12 * 4 * 256 * 256
    assert training_flops_per_token(arch) == 6 * matmul_parameters + attention == 71_185_920


def test_shorter_sequences_change_only_the_attention_term():
    arch = Architecture(preset="tiny", vocab_size=32000)
    difference = training_flops_per_token(arch) - training_flops_per_token(arch, seq_len=128)
    assert difference == 12 * 4 * 256 * 128


def test_sizing_imports_no_torch():
    code = "import sys, lmforge.operator.api.sizing; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
