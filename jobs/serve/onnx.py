"""The ONNX runtime: the model as one graph of onnxruntime's fused transformer operators, run by
onnxruntime against the engine's KV cache in place, behind the call the engine makes on a
Transformer, `model(tokens, step=Step(cache, slots, positions))`.

Each layer is eleven nodes:

    SkipSimplifiedLayerNormalization  residual add + RMSNorm
    MatMul                            q, k and v in one
    GroupQueryAttention               rotary embedding, the new keys and values written into the
                                      cache, causal attention over each row's own length
    MatMul                            o_proj
    SkipSimplifiedLayerNormalization
    MatMul, Split, Sigmoid, Mul, Mul  gate and up in one, silu(gate) * up
    MatMul                            down_proj

Inputs: input_ids (batch, seq); seqlens_k (batch,) int32, each row's length after this step - 1;
total_sequence_length (int32 scalar); past_key_{i}/past_value_{i} (batch, kv_heads, context,
head_dim), the cache rows of the batch, which are also bound as present_key_{i}/present_value_{i}:
GroupQueryAttention sees one buffer and appends in place. Output: logits of each row's last token.

Built here with `onnx.helper` rather than exported by `torch.onnx.export`: the exporter spells
RMSNorm, rotary, the grouped heads and attention out as 670 nodes for the small preset, copies
the past in and out every step, and takes twice as long per decode step. onnxruntime-genai's
model builder makes graphs like this one, but from a transformers model and for its own
generation loop, not for our engine's continuous batching (docs/serving.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper, save_model
from torch import nn

from lmforge.jobs.model import KVCache, Step, Transformer

OPSET, CONTRIB = 21, "com.microsoft"


def export(model: Transformer, path: str | Path) -> Path:
    """Write the model's decoder graph to `path`, its weights to `path`.data (fp32)."""
    graph, path = _Graph(model), Path(path)
    h, residual = graph.embedding()
    for i in range(model.arch.layers):
        h, residual = graph.layer(i, h, residual)
    graph.logits(h)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(CONTRIB, 1)]
    graph_model = helper.make_model(graph.build(), opset_imports=opsets)
    data = path.with_name(f"{path.name}.data")
    data.unlink(missing_ok=True)  # onnx refuses to overwrite it
    save_model(graph_model, path, save_as_external_data=True, location=data.name)
    return path


class _Graph:
    """The decoder graph as it is built: its nodes, and its weights as initializers."""

    def __init__(self, model: Transformer):
        self.arch, self.model = model.arch, model
        self.state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
        self.head_dim = self.arch.d_model // self.arch.heads
        self.nodes, self.weights = [], []
        self.past, self.present = [], []  # past_key_0, past_value_0, ...; present_key_0, ...

    def weight(self, name: str, array: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def linear(self, x: str, out: str, *names: str) -> str:
        """x @ W.T for the nn.Linear weights `names`, concatenated along their outputs."""
        joined = np.concatenate([self.state[f"{n}.weight"] for n in names]).T
        self.nodes.append(
            helper.make_node("MatMul", [x, self.weight(f"{out}.weight", joined)], [out])
        )
        return out

    def norm(self, delta: str, residual: str, gain: str, out: str) -> tuple[str, str]:
        """(RMSNorm(residual + delta), residual + delta)."""
        outputs = [out, "", "", f"{out}.residual"]
        inputs = [delta, residual, self.weight(gain, self.state[gain])]
        self.nodes.append(
            helper.make_node(
                "SkipSimplifiedLayerNormalization",
                inputs,
                outputs,
                domain=CONTRIB,
                epsilon=self.arch.norm_eps,
            )
        )
        return out, outputs[3]

    def embedding(self) -> tuple[str, str]:
        """The tokens' embeddings, and the first layer's norm of them; the rotary tables."""
        embed = self.weight("embed", self.state["model.embed_tokens.weight"])
        self.nodes.append(helper.make_node("Gather", [embed, "input_ids"], ["x"]))
        half = self.head_dim // 2
        self.weight("cos", self.model.rope_cos[:, :half].numpy())
        self.weight("sin", self.model.rope_sin[:, :half].numpy())
        first = "model.layers.0.input_layernorm.weight"
        self.nodes.append(  # ORT's RMSNorm (in the ONNX domain despite not being an ONNX operator)
            helper.make_node(
                "SimplifiedLayerNormalization",
                ["x", self.weight(first, self.state[first])],
                ["h0"],
                axis=-1,
                epsilon=self.arch.norm_eps,
            )
        )
        return "h0", "x"

    def layer(self, i: int, h: str, residual: str) -> tuple[str, str]:
        """Layer i: attention over the cache, then the SwiGLU MLP, each with its residual; its
        output already normed for the next layer (or the head)."""
        p, arch = f"model.layers.{i}", self.arch
        qkv = self.linear(h, f"qkv{i}", *(f"{p}.self_attn.{n}_proj" for n in "qkv"))
        self.past += [f"past_key_{i}", f"past_value_{i}"]
        self.present += [f"present_key_{i}", f"present_value_{i}"]
        self.nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [qkv, "", "", *self.past[-2:], "seqlens_k", "total_sequence_length", "cos", "sin"],
                [f"attn{i}", *self.present[-2:]],
                domain=CONTRIB,
                num_heads=arch.heads,
                kv_num_heads=arch.kv_heads,
                do_rotary=1,
            )
        )
        attn = self.linear(f"attn{i}", f"o{i}", f"{p}.self_attn.o_proj")
        h, residual = self.norm(attn, residual, f"{p}.post_attention_layernorm.weight", f"m{i}")
        gate_up = self.linear(h, f"gate_up{i}", f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj")
        gate, up = f"gate{i}", f"up{i}"
        self.nodes += [
            helper.make_node("Split", [gate_up], [gate, up], axis=-1, num_outputs=2),
            helper.make_node("Sigmoid", [gate], [f"{gate}.sigmoid"]),
            helper.make_node("Mul", [gate, f"{gate}.sigmoid"], [f"{gate}.silu"]),
            helper.make_node("Mul", [f"{gate}.silu", up], [f"swiglu{i}"]),
        ]
        down = self.linear(f"swiglu{i}", f"down{i}", f"{p}.mlp.down_proj")
        last = i == arch.layers - 1
        gain = "model.norm.weight" if last else f"model.layers.{i + 1}.input_layernorm.weight"
        return self.norm(down, residual, gain, f"h{i + 1}")

    def logits(self, h: str) -> None:
        """The head over each row's last token."""
        ends = [("-1", -1), ("end", 2**62), ("1", 1)]
        ends = [self.weight(n, np.array([v], np.int64)) for n, v in ends]
        self.nodes.append(helper.make_node("Slice", [h, *ends], ["h.last"]))
        self.linear("h.last", "logits", "lm_head")

    def build(self):
        cache_shape = ["batch", self.arch.kv_heads, "context", self.head_dim]
        tensor = helper.make_tensor_value_info
        inputs = [
            tensor("input_ids", TensorProto.INT64, ["batch", "seq"]),
            tensor("seqlens_k", TensorProto.INT32, ["batch"]),
            tensor("total_sequence_length", TensorProto.INT32, []),
            *(tensor(n, TensorProto.FLOAT, cache_shape) for n in self.past),
        ]
        outputs = [
            tensor("logits", TensorProto.FLOAT, ["batch", 1, self.arch.vocab_size]),
            *(tensor(n, TensorProto.FLOAT, cache_shape) for n in self.present),
        ]
        return helper.make_graph(self.nodes, "lmforge-decoder", inputs, outputs, self.weights)


class OnnxModel(nn.Module):
    """A Transformer's forward for the engine (`model(tokens, step=...)` -> logits of each row's
    last token), computed by onnxruntime on the engine's cache. The batch's slots must be
    consecutive (the engine keeps its running sequences in the first slots): their rows are then
    one block of each layer's cache, bound without a copy. Its one parameter only says where
    inputs go and the KV cache's dtype: fp32, on the CPU."""

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
        self._cache, self._bindings = None, {}

    def forward(self, tokens: torch.Tensor, step: Step) -> torch.Tensor:
        batch, seq = tokens.shape
        first = int(step.slots[0])
        if not torch.equal(step.slots, torch.arange(first, first + batch)):
            raise ValueError(f"the onnx runtime needs consecutive cache slots, not {step.slots}")
        lengths = step.positions + seq
        binding = self._binding(step.cache, first, batch)
        binding.bind_cpu_input("input_ids", tokens.numpy())
        binding.bind_cpu_input("seqlens_k", (lengths - 1).int().numpy())
        binding.bind_cpu_input("total_sequence_length", np.array(int(lengths.max()), np.int32))
        logits = torch.empty(batch, 1, self.arch.vocab_size)
        binding.bind_output("logits", "cpu", 0, np.float32, logits.shape, logits.data_ptr())
        self.session.run_with_iobinding(binding)
        return logits

    def _binding(self, cache: KVCache, first: int, batch: int):
        """An IOBinding with the cache rows first..first+batch of every layer as past and present
        (32 bindings for the small preset: 0.3 ms, so made once per block of rows and kept while
        the cache is the same)."""
        key = (cache.k.data_ptr(), cache.v.data_ptr(), cache.k.shape)
        if key != self._cache:
            self._cache, self._bindings = key, {}
        if (first, batch) not in self._bindings:
            binding = self.session.io_binding()
            for layer in range(self.arch.layers):
                for name, kv in (("key", cache.k), ("value", cache.v)):
                    rows = kv[layer, first : first + batch]  # contiguous: (batch, kv, ctx, dim)
                    for io, bind in (
                        ("past", binding.bind_input),
                        ("present", binding.bind_output),
                    ):
                        bind(
                            f"{io}_{name}_{layer}",
                            "cpu",
                            0,
                            np.float32,
                            rows.shape,
                            rows.data_ptr(),
                        )
            self._bindings[first, batch] = binding
        return self._bindings[first, batch]
