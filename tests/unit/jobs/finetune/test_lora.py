"""LoRA adapters merged into plain weights compute what the adapted model does."""

import torch

from lmforge.jobs.finetune import lora
from lmforge.jobs.model import Transformer
from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.finetune import Lora


def test_merged_lora_computes_what_the_adapted_model_does():
    torch.manual_seed(0)
    arch = Architecture.model_validate({"layers": 2, "dModel": 64, "heads": 4, "kvHeads": 2,
                                        "contextLength": 32, "vocabSize": 256})  # fmt: skip
    adapted = lora.add(Transformer(arch), Lora(rank=4, alpha=8))
    for name, p in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # as if trained (peft starts B at zero)
    merged = Transformer(arch)
    merged.load_state_dict(lora.merged(adapted.state_dict(), lora.layers(adapted)))
    tokens = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.allclose(adapted(tokens), merged(tokens), atol=1e-5)
