"""The ONNX runtime: the model exported as one ONNX graph with past keys and values as inputs and
the new ones as outputs, run by onnxruntime behind the same call the engine makes on a
Transformer, `model(tokens, step=Step(cache, slots, positions))`.

The graph is the decoder from token ids to logits with the attention's past made explicit:

    input_ids (batch, seq), position_ids (batch, seq),
    past_keys, past_values (layers, batch, kv_heads, past, head_dim),
    attention_mask (batch, 1, seq, past + seq)   -> logits, keys, values (of the seq new tokens)

so one graph serves prefill (past of length 1, masked out) and batched decode steps (seq 1).
`OnnxModel` keeps the KV cache in torch as the native runtime does: it gathers each sequence's
past from its slot, runs the session, and writes the new keys and values back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model import Step, Transformer, apply_rope

INPUTS = ("input_ids", "position_ids", "past_keys", "past_values", "attention_mask")
OUTPUTS = ("logits", "keys", "values")


class _Decoder(nn.Module):
    """The Transformer's layers, with explicit past keys and values (what the graph computes)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, past_keys, past_values, attention_mask):
        m = self.model
        x = m.model.embed_tokens(input_ids)
        cos, sin = m.rope_cos[position_ids][:, None], m.rope_sin[position_ids][:, None]
        keys, values = [], []
        for i, layer in enumerate(m.model.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            batch, seq, _ = h.shape
            q = a.q_proj(h).view(batch, seq, a.heads, a.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(batch, seq, a.kv_heads, a.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(batch, seq, a.kv_heads, a.head_dim).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            keys.append(k)
            values.append(v)
            group = a.heads // a.kv_heads  # grouped-query attention, spelled out for the exporter
            k_all = torch.cat([past_keys[i], k], 2).repeat_interleave(group, 1)
            v_all = torch.cat([past_values[i], v], 2).repeat_interleave(group, 1)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=attention_mask)
            x = x + a.o_proj(y.transpose(1, 2).reshape(batch, seq, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return m.lm_head(m.model.norm(x)), torch.stack(keys), torch.stack(values)


def _example(model: Transformer, batch: int = 2, seq: int = 3, past: int = 2) -> tuple:
    arch = model.arch
    head_dim = arch.d_model // arch.heads
    kv = torch.zeros(arch.layers, batch, arch.kv_heads, past, head_dim)
    positions = past + torch.arange(seq).expand(batch, seq)
    return (
        torch.zeros(batch, seq, dtype=torch.long),
        positions,
        kv,
        kv.clone(),
        torch.ones(batch, 1, seq, past + seq, dtype=torch.bool),
    )


def export(model: Transformer, path: str | Path) -> Path:
    """Write the model's decoder graph to `path` (fp32: the server refuses onnx with bf16)."""
    auto = torch.export.Dim.AUTO  # batch, seq, past and the mask's past + seq: the exporter
    shapes = {  # relates them from the graph
        "input_ids": {0: auto, 1: auto},
        "position_ids": {0: auto, 1: auto},
        "past_keys": {1: auto, 3: auto},
        "past_values": {1: auto, 3: auto},
        "attention_mask": {0: auto, 2: auto, 3: auto},
    }
    decoder = _Decoder(model).eval()
    with torch.no_grad():
        program = torch.onnx.export(
            decoder,
            _example(model),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_shapes=shapes,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))
    return Path(path)


class OnnxModel(nn.Module):
    """A Transformer's forward for the engine (`model(tokens, step=...)` -> logits), computed by
    onnxruntime from an exported graph. Its one parameter only says where inputs go and the KV
    cache's dtype: fp32, on the CPU."""

    def __init__(self, path: str | Path, arch, threads: int | None = None):
        import onnxruntime

        super().__init__()
        self.arch = arch
        self.placement = nn.Parameter(torch.zeros(()), requires_grad=False)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    def forward(self, tokens: torch.Tensor, step: Step) -> torch.Tensor:
        seq = tokens.shape[1]
        at = step.at(seq)  # (batch, seq) positions of the new tokens
        past = max(1, int(step.positions.max()))  # a past of length 1, masked, for a prefill
        cache = step.cache
        past_keys = cache.k[:, step.slots, :, :past]
        past_values = cache.v[:, step.slots, :, :past]
        # Each new token sees its sequence's past (positions before its first new token) and the
        # new tokens up to itself.
        seen = torch.arange(past)[None, None, :] < step.positions[:, None, None]
        causal = torch.ones(seq, seq, dtype=torch.bool).tril().expand(len(tokens), seq, seq)
        mask = torch.cat([seen.expand(-1, seq, -1), causal], -1)[:, None]
        feed = {
            "input_ids": tokens.numpy(),
            "position_ids": at.numpy(),
            "past_keys": np.ascontiguousarray(past_keys.numpy()),
            "past_values": np.ascontiguousarray(past_values.numpy()),
            "attention_mask": mask.numpy(),
        }
        logits, keys, values = self.session.run(list(OUTPUTS), feed)
        rows = step.slots[:, None]
        for layer in range(self.arch.layers):  # (batch, kv, seq, dim) -> cache rows at `at`
            cache.k[layer][rows, :, at] = torch.from_numpy(keys[layer]).transpose(1, 2)
            cache.v[layer][rows, :, at] = torch.from_numpy(values[layer]).transpose(1, 2)
        return torch.from_numpy(logits)
