"""How big a model is and how much compute it takes to train, from its shape alone (no torch).

The operator's `lmforge plan` and the trainer's MFU both use these, so they must agree with the
model in jobs/model.py: a test builds every preset and compares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import prod

from lmforge.operator.api.architecture import Architecture


def parameter_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Every parameter of the model, by its Hugging Face LlamaForCausalLM name.

    `lm_head.weight` is absent when embeddings are tied: it is the same tensor as
    `model.embed_tokens.weight` (and Hugging Face checkpoints leave it out the same way).
    Raises ValueError when a size is missing; pass `arch.resolved(vocab_size)`.
    """
    arch = arch.resolved()
    d, head_dim = arch.d_model, arch.d_model // arch.heads
    kv_dim = arch.kv_heads * head_dim
    shapes = {"model.embed_tokens.weight": (arch.vocab_size, d)}
    for i in range(arch.layers):
        layer = f"model.layers.{i}"
        shapes |= {
            f"{layer}.self_attn.q_proj.weight": (d, d),
            f"{layer}.self_attn.k_proj.weight": (kv_dim, d),
            f"{layer}.self_attn.v_proj.weight": (kv_dim, d),
            f"{layer}.self_attn.o_proj.weight": (d, d),
            f"{layer}.mlp.gate_proj.weight": (arch.ffn_size, d),
            f"{layer}.mlp.up_proj.weight": (arch.ffn_size, d),
            f"{layer}.mlp.down_proj.weight": (d, arch.ffn_size),
            f"{layer}.input_layernorm.weight": (d,),
            f"{layer}.post_attention_layernorm.weight": (d,),
        }
    shapes["model.norm.weight"] = (d,)
    if not arch.tied_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, d)
    return shapes


def parameter_count(arch: Architecture) -> int:
    """Trainable parameters; a tied embedding counts once."""
    return sum(prod(shape) for shape in parameter_shapes(arch).values())


def layer_parameter_count(arch: Architecture) -> int:
    """Parameters of one transformer block (attention, MLP and their two norms)."""
    return sum(
        prod(s) for k, s in parameter_shapes(arch).items() if k.startswith("model.layers.0.")
    )


def training_flops_per_token(arch: Architecture, seq_len: int | None = None) -> int:
    """Forward plus backward FLOPs per trained token: 6N + 12 * layers * d_model * seq_len.

    This is the model-FLOPs formula of the PaLM paper's appendix B (6N + 12·L·H·Q·T, with
    H·Q = d_model), the one MFU is conventionally reported against. N counts the parameters that
    take part in matrix multiplies: everything except the input embedding, whose lookup costs no
    FLOPs; when embeddings are tied the shared matrix is the output projection, so it counts.
    The attention term counts the full T x T score matrix, as PaLM does, although causal kernels
    skip about half of it. seq_len defaults to the context length.
    """
    arch = arch.resolved()
    seq_len = seq_len or arch.context_length
    embedding = arch.vocab_size * arch.d_model
    matmul_parameters = parameter_count(arch) - (0 if arch.tied_embeddings else embedding)
    return 6 * matmul_parameters + 12 * arch.layers * arch.d_model * seq_len


@dataclass(frozen=True)
class Gpu:
    memory_gib: float
    """Total memory as the driver reports it."""
    bf16_tflops: float
    """Dense (no sparsity) bf16 tensor-core peak, from the vendor's data sheet."""
    memory_tbps: float
    """Memory bandwidth (TB/s), from the data sheet: what bounds decoding one sequence."""


GPUS = {
    "A100-40GB": Gpu(40.0, 312, 1.555),
    "A100-80GB": Gpu(80.0, 312, 2.039),
    "H100-80GB": Gpu(79.6, 989, 3.35),  # SXM
    "H200-141GB": Gpu(140.4, 989, 4.8),
    "L4": Gpu(22.5, 121, 0.3),
    "L40S": Gpu(45.0, 362, 0.864),
}


def gpu_named(device_name: str) -> Gpu | None:
    """The GPU of a device name as the driver gives it ("NVIDIA H100 80GB HBM3" -> H100-80GB),
    the first listed of its model; None for one not listed."""
    found = (g for k, g in GPUS.items() if re.search(rf"\b{k.split('-')[0]}\b", device_name))
    return next(found, None)
