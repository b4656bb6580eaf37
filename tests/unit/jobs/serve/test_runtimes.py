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


def test_onnx_graph_equals_native_in_prefill_decode_and_batches(loaded, tmp_path):
    """The exported graph on onnxruntime, behind the engine's call: the same logits (within float
    rounding) for a prompt and for each decode step, the same greedy continuations, and the same
    outputs for 6 concurrent requests of different lengths batched over 3 slots."""
    from lmforge.jobs.model import KVCache, Step
    from lmforge.jobs.serve.engine import Engine
    from lmforge.jobs.serve.onnx import OnnxModel, export

    from .test_engine import Collect

    model, tokenizer = loaded
    graph = OnnxModel(export(copy.deepcopy(model), tmp_path / "model.onnx"), model.arch)
    errors = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt, add_special_tokens=False).ids
            caches = KVCache(model.arch, 1), KVCache(model.arch, 1)
            tokens, position = torch.tensor([ids]), torch.tensor([0])
            for _ in range(4):  # the prompt, then three decode steps
                a, b = (
                    m(tokens, step=Step(c, torch.tensor([0]), position))
                    for m, c in zip((model, graph), caches, strict=True)
                )
                errors.append((a[:, -1:] - b).abs().max().item())  # b: the last token's
                position = position + tokens.shape[1]
                tokens = a[:, -1:].argmax(-1)
            assert generate(model, ids, Sampling(16, temperature=0), None) == generate(
                graph, ids, Sampling(16, temperature=0), None
            )
    print(f"onnx: max |logit error| {max(errors):.2e}")
    assert max(errors) < 1e-4

    def outputs(runtime) -> list[str]:
        engine, done = Engine(runtime, tokenizer, slots=3), [Collect() for _ in PROMPTS]
        try:
            for i, (prompt, collect) in enumerate(zip(PROMPTS, done, strict=True)):
                ids = tokenizer.encode(prompt, add_special_tokens=False).ids
                engine.submit(ids, Sampling(4 + 3 * i, temperature=0), collect)
            assert all(c.done.wait(60) for c in done)
        finally:
            engine.close()
        return ["".join(o.text for o in c.outputs) for c in done]

    assert outputs(graph) == outputs(model)
