"""LoRA adapters through peft, on our own model (peft wraps any nn.Linear by name), and the merge
that turns a trained adapter back into plain weights for export."""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from lmforge.operator.api.finetune import Lora


def add(model: torch.nn.Module, lora: Lora) -> torch.nn.Module:
    """The model with adapters on `lora.targetModules`; every other weight frozen."""
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules))  # fmt: skip
    return inject_adapter_in_model(config, model)


@torch.no_grad()
def merged(state: dict[str, torch.Tensor], modules: list[tuple[str, LoraLayer]]) -> dict:
    """A plain state dict (the base model's keys) with each adapter merged into its weight:
    W + (alpha / r) B A."""
    out = {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}
    for name, layer in modules:
        delta = layer.get_delta_weight("default")
        out[f"{name}.weight"] = out[f"{name}.weight"] + delta.to(out[f"{name}.weight"].dtype)
    return out


def layers(model: torch.nn.Module) -> list[tuple[str, LoraLayer]]:
    return [
        (n.removeprefix("module."), m) for n, m in model.named_modules() if isinstance(m, LoraLayer)
    ]
