"""The decoder-only transformer's shape: a named preset, any field of which can be overridden."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.operator.api.base import Model, Rule

# Llama-style shapes, from one that trains in CPU minutes to the ~1B class (Llama 3.2 1B's shape).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(layers=4, d_model=256, heads=4, kv_heads=2, ffn_size=768, context_length=256),
    "small": dict(layers=8, d_model=512, heads=8, kv_heads=4, ffn_size=1536, context_length=1024),
    "125m": dict(layers=12, d_model=768, heads=12, kv_heads=4, ffn_size=2048, context_length=2048),
    "350m": dict(layers=24, d_model=1024, heads=16, kv_heads=8, ffn_size=2816, context_length=2048),
    "1b": dict(layers=16, d_model=2048, heads=32, kv_heads=8, ffn_size=8192, context_length=2048),
}
PresetName = Literal["tiny", "small", "125m", "350m", "1b"]

_SHAPE = ("layers", "d_model", "heads", "kv_heads", "ffn_size", "context_length")


class Architecture(Model):
    """A preset, or every required size; fields set here override the preset's."""

    preset: PresetName | None = None
    layers: int | None = Field(default=None, ge=1, le=256)
    d_model: int | None = Field(default=None, ge=16, le=65536)
    """Hidden size."""
    heads: int | None = Field(default=None, ge=1, le=256)
    kv_heads: int | None = Field(default=None, ge=1, le=256)
    """Key/value heads for grouped-query attention; equal to heads when unset."""
    ffn_size: int | None = Field(default=None, ge=16, le=262144)
    """SwiGLU hidden size; about 8/3 of d_model, rounded up to 256, when unset."""
    context_length: int | None = Field(default=None, ge=16, le=131072)
    vocab_size: int | None = Field(default=None, ge=256, le=1048576)
    """Taken from the tokenizer when unset; must be at least the tokenizer's size."""
    rope_theta: float = Field(default=10000.0, gt=0)
    norm_eps: float = Field(default=1e-5, gt=0, le=0.1)
    tied_embeddings: bool = False
    """Share the input embedding with the output projection."""

    rules = (
        Rule(
            "has(self.preset) || (has(self.layers) && has(self.dModel) && has(self.heads)"
            " && has(self.contextLength))",
            "set a preset, or all of layers, dModel, heads and contextLength",
        ),
        Rule(
            "!has(self.heads) || !has(self.kvHeads) || self.heads % self.kvHeads == 0",
            "heads must be a multiple of kvHeads",
            ".kvHeads",
        ),
        Rule(
            "!has(self.heads) || !has(self.dModel) || (self.dModel % self.heads == 0"
            " && (self.dModel / self.heads) % 2 == 0)",
            "dModel must be heads times an even head size (RoPE rotates pairs)",
            ".dModel",
        ),
    )

    def resolved(self, vocab_size: int | None = None) -> Architecture:
        """Every size filled in: preset, then overrides, then derived defaults.

        Re-validates the merged shape, so a preset with a conflicting override is refused with
        the same rules the API server applies to explicit fields.
        """
        fields = dict(PRESETS[self.preset]) if self.preset else {}
        fields |= self.model_dump(exclude_none=True, exclude={"preset"})
        fields.setdefault("kv_heads", fields["heads"])
        fields.setdefault("ffn_size", -(-8 * fields["d_model"] // 3 // 256) * 256)
        if vocab_size is not None:
            if fields.get("vocab_size", vocab_size) < vocab_size:
                raise ValueError(
                    f"vocabSize {fields['vocab_size']} is smaller than the tokenizer's"
                    f" {vocab_size}: raise it or leave it unset"
                )
            fields.setdefault("vocab_size", vocab_size)
        resolved = Architecture(**fields)
        missing = [f for f in (*_SHAPE, "vocab_size") if getattr(resolved, f) is None]
        if missing:
            raise ValueError(f"architecture is missing {', '.join(missing)}")
        return resolved
