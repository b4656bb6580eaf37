"""A Llama-style decoder-only transformer, in one file that reads top to bottom.

RMSNorm, rotary position embeddings (RoPE), grouped-query attention and a SwiGLU MLP, as in
Llama 2/3. Submodules are named like Hugging Face's LlamaForCausalLM, so `state_dict()` keys are
theirs (`model.layers.0.self_attn.q_proj.weight`, ...) and jobs/hf.py exports without renaming.

Built from a resolved `Architecture`. To build a large model without allocating it (FSDP), create
it under `torch.device("meta")`, shard it, `to_empty(device=...)`, then call `init_weights()`:
each rank then holds its shards, and the weights are those of an unsharded build.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from lmforge.operator.api.architecture import Architecture

INIT_STD = 0.02


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The mean square is taken in fp32: in bf16 it loses too much precision. Same order of
        # operations as Hugging Face's LlamaRMSNorm, so exported models give the same logits.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each position's rotation angles, shape (length, head_dim), in fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    # "Rotate half" layout (Hugging Face Llama): dimension i pairs with i + head_dim/2, not i + 1.
    # Checkpoints trained in one layout give wrong answers when run in the other.
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (batch, heads, seq, head_dim) by the angles of its positions."""
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat((-second, first), dim=-1)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)


class KVCache:
    """Keys and values of every layer for `slots` sequences of up to `length` tokens: the state
    of incremental decoding. A sequence's slot is where its keys and values are; the server's
    engine moves a sequence to another slot with `move`."""

    def __init__(
        self,
        arch: Architecture,
        slots: int,
        length: int | None = None,
        dtype=torch.float32,
        device: torch.device | None = None,
    ):
        length = length or arch.context_length
        shape = (arch.layers, slots, arch.kv_heads, length, arch.d_model // arch.heads)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` positions of slot `source` to slot `target`."""
        for cache in (self.k, self.v):
            cache[:, target, :, :length] = cache[:, source, :, :length]


class Step(NamedTuple):
    """Where a batch goes in the cache: row b holds the tokens of sequence `slots[b]` from
    position `positions[b]` on (a whole prompt, or the one token of a decode step)."""

    cache: KVCache
    slots: torch.Tensor
    positions: torch.Tensor

    def at(self, seq: int) -> torch.Tensor:
        """(batch, seq): the position of every token of the batch."""
        return self.positions[:, None] + torch.arange(seq)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store this batch's keys and values, then attend from each token to its sequence's
        tokens up to itself."""
        at = self.at(q.shape[2])
        keys, values = self.cache.k[layer], self.cache.v[layer]  # (slots, kv_heads, length, dim)
        rows = self.slots[:, None]
        keys[rows, :, at] = k.transpose(1, 2).to(keys.dtype)
        values[rows, :, at] = v.transpose(1, 2).to(values.dtype)
        span = int(at.max()) + 1
        mask = (torch.arange(span) <= at[..., None])[:, None]  # (batch, 1, seq, span)
        keys, values = keys[self.slots, :, :span], values[self.slots, :, :span]
        return F.scaled_dot_product_attention(
            q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask, enable_gqa=True
        )


class Attention(nn.Module):
    """Causal self-attention; kv_heads < heads shares each key/value head among a group."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.heads, self.kv_heads = arch.heads, arch.kv_heads
        self.head_dim = arch.d_model // arch.heads
        self.q_proj = nn.Linear(arch.d_model, arch.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(arch.d_model, arch.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(arch.d_model, arch.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(arch.heads * self.head_dim, arch.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, step: Step | None, layer: int
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # enable_gqa lets the kernel broadcast each k/v head over its group of query heads,
        # instead of materialising heads/kv_heads copies of k and v.
        if step is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            y = step.attend(layer, q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.gate_proj = nn.Linear(arch.d_model, arch.ffn_size, bias=False)
        self.up_proj = nn.Linear(arch.d_model, arch.ffn_size, bias=False)
        self.down_proj = nn.Linear(arch.ffn_size, arch.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: the residual stream itself is never normalised."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.input_layernorm = RMSNorm(arch.d_model, arch.norm_eps)
        self.self_attn = Attention(arch)
        self.post_attention_layernorm = RMSNorm(arch.d_model, arch.norm_eps)
        self.mlp = MLP(arch)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        step: Step | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, step, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch = arch.resolved()  # raises if a size (e.g. vocab_size) is missing
        device = torch.empty(0).device  # the default, or the one a `with torch.device` sets
        with torch.device("meta"):  # init_weights() draws every weight: skip torch's defaults
            self.model = nn.ModuleDict(
                dict(
                    embed_tokens=nn.Embedding(arch.vocab_size, arch.d_model),
                    layers=nn.ModuleList(Block(arch) for _ in range(arch.layers)),
                    norm=RMSNorm(arch.d_model, arch.norm_eps),
                )
            )
            self.head()
            self.tie()
            # Derived from the shape, so not saved in checkpoints (persistent=False).
            self.register_buffer("rope_cos", torch.empty(0), persistent=False)
            self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        if device.type != "meta":
            self.to_empty(device=device)
            self.init_weights()

    def head(self) -> None:
        """The layer that reads the final hidden states: the language-model head."""
        self.lm_head = nn.Linear(self.arch.d_model, self.arch.vocab_size, bias=False)

    def tie(self) -> None:
        """With tied embeddings, the head's weight is the embedding's."""
        if self.arch.tied_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def to_empty(self, *, device, recurse: bool = True):
        """Storage on `device`, uninitialized; a tied head still shares the embedding's."""
        super().to_empty(device=device, recurse=recurse)
        self.tie()
        return self

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, 0.02) weights, unit norm gains, and the RoPE tables, all in place.

        The projections that write into the residual stream (o_proj, down_proj) get std scaled
        by 1/sqrt(2 * layers), as in GPT-2: each block adds two of them to the stream, and this
        keeps its variance from growing with depth.

        Each weight is drawn whole on the CPU from torch's seeded generator, the same numbers
        whether the model is sharded or not, and a sharded parameter (an FSDP2 DTensor) keeps
        this rank's part: no more than one full weight exists at a time.
        """
        residual_std = INIT_STD / math.sqrt(2 * self.arch.layers)
        for name, param in self.named_parameters():  # a tied weight is listed once
            full = torch.empty(param.shape, dtype=param.dtype)
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(full, std=residual_std)
            elif param.dim() == 2:
                nn.init.normal_(full, std=INIT_STD)
            else:
                nn.init.ones_(full)
            if isinstance(param, DTensor):
                full = distribute_tensor(
                    full.to(param.device), param.device_mesh, param.placements, src_data_rank=None
                )
            param.copy_(full)
        arch = self.arch
        cos, sin = rope_tables(arch.d_model // arch.heads, arch.context_length, arch.rope_theta)
        device = self.rope_cos.device
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)

    def hidden(self, tokens: torch.Tensor, step: Step | None = None) -> torch.Tensor:
        """The final hidden states (batch, seq, d_model), normalised: what a head reads. With a
        `step`, the tokens continue sequences held in its KV cache (incremental decoding)."""
        seq = tokens.shape[1]
        end = seq if step is None else int(step.positions.max()) + seq
        if end > self.arch.context_length:
            raise ValueError(
                f"sequence of {end} tokens is longer than the context length"
                f" {self.arch.context_length}: shorten it or raise architecture.contextLength"
            )
        x = self.model.embed_tokens(tokens)
        if step is None:
            cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        else:  # each row from its own position; (batch, 1, seq, dim) broadcasts over heads
            at = step.at(seq)
            cos, sin = self.rope_cos[at][:, None], self.rope_sin[at][:, None]
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, step, i)
        return self.model.norm(x)

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor | None = None, step: Step | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch, seq, vocab) for tokens (batch, seq); with targets, also the mean loss.
        Targets equal to -100 are ignored (e.g. prompt tokens in supervised fine-tuning)."""
        logits = self.lm_head(self.hidden(tokens, step))
        if targets is None:
            return logits
        # Cross-entropy in fp32: a bf16 log-softmax over a large vocabulary is too coarse.
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss


class Scorer(Transformer):
    """A reward model: the same body and a linear head that reads one position's hidden state as
    a scalar score. Hugging Face's LlamaForSequenceClassification with one label has this shape
    and these names (`score.weight`), reading the last token that is not padding."""

    def head(self) -> None:
        self.score = nn.Linear(self.arch.d_model, 1, bias=False)

    def tie(self) -> None:
        """The score head reads the hidden states; nothing shares the embedding."""

    def forward(self, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(batch,) scores, each read at position `last[b]` of row b."""
        x = self.hidden(tokens)
        return self.score(x[torch.arange(len(tokens), device=x.device), last]).squeeze(-1).float()
