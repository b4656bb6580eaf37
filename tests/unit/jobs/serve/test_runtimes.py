"""Each runtime against native fp32 on a fixed prompt set: the logits differ by a bounded amount,
and greedy continuations agree. (The model is random, so its logits are nearly flat: a harder
case for argmax agreement than a trained model.)"""

import copy

import torch

from lmforge.jobs.generate import Sampling, generate
from lmforge.jobs.serve.__main__ import quantize_int8

PROMPTS = ["def load(", "import json\n", "class Decoder", "    return ", "# Copyright", "if x:"]


def test_int8_stays_close_to_fp32(loaded):
    model, tokenizer = loaded
    int8 = quantize_int8(copy.deepcopy(model))
    assert any("quantized" in type(m).__module__ for m in int8.modules())
    errors, scale, agree, total = [], [], 0, 0
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt, add_special_tokens=False).ids
            exact, approx = model(torch.tensor([ids])), int8(torch.tensor([ids]))
            errors.append((exact - approx).abs().max().item())
            scale.append(exact.std().item())
            a = generate(model, ids, Sampling(16, temperature=0), None)
            b = generate(int8, ids, Sampling(16, temperature=0), None)
            same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
            agree, total = agree + same, total + len(a)
    print(
        f"int8: max |logit error| {max(errors):.4f} (logit std {min(scale):.4f}); "
        f"greedy agrees for {agree}/{total} tokens before the first difference"
    )
    assert max(errors) < 0.25 * min(scale)
    assert agree >= 0.5 * total
