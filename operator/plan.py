"""`lmforge plan`: whether a training run fits in GPU memory, how fast it goes, what it costs.

Estimates from the model's shape alone (no torch), before anything is scheduled. Memory per GPU
is given for DDP and FSDP, each with and without activation checkpointing:

    DDP   states = 16 * N
    FSDP  states = 16 * N / gpus + 2 * 4 * U
    total        = states + activations

16 bytes per parameter is the ZeRO paper's accounting for mixed-precision AdamW: bf16 weights and
gradients (2 + 2) plus fp32 master weights, momentum and variance (4 + 4 + 4); FSDP2 with bf16
compute keeps fp32 weights and gradients instead, which comes to the same 16. FSDP shards them
over all GPUs, but also holds the gathered bf16 weights and gradients (4 bytes per parameter) of
two units at once (the one computing and the one prefetched); U is the largest unit, a block or
the embedding. See `activation_bytes` for activations. A tenth of each GPU's memory is kept free
for the CUDA context, communication buffers and allocator fragmentation.

Throughput is what the stated MFU implies: gpus * peak bf16 FLOP/s * mfu / FLOPs per token
(operator/api/sizing.py), times a stated rule-of-thumb factor for the interconnect between nodes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

from pydantic import ValidationError

from lmforge.operator.api.architecture import PRESETS, Architecture
from lmforge.operator.api.sizing import (
    GPUS,
    layer_parameter_count,
    parameter_count,
    training_flops_per_token,
)
from lmforge.operator.validate import field_path

GIB = 2**30
USABLE_MEMORY = 0.9
STATE_BYTES_PER_PARAMETER = 16


# Share of the stated MFU kept when gradients cross nodes over this link. A rule of thumb for
# communication that is not fully overlapped with compute, not a model of it; one node counts
# as 1.0 (NVLink inside the node). Measure a short run to replace it.
INTERCONNECTS = {"nvlink": 1.0, "ib": 0.9, "ethernet": 0.7}

STRATEGIES = (("ddp", False), ("ddp", True), ("fsdp", False), ("fsdp", True))


@dataclass(frozen=True)
class Hardware:
    gpu: str
    memory_gib: float
    bf16_tflops: float
    nodes: int
    gpus_per_node: int
    interconnect: str

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def usable_bytes(self) -> float:
        return self.memory_gib * GIB * USABLE_MEMORY

    @property
    def interconnect_factor(self) -> float:
        return INTERCONNECTS[self.interconnect] if self.nodes > 1 else 1.0


@dataclass(frozen=True)
class Memory:
    strategy: str
    activation_checkpointing: bool
    states_bytes: float
    activations_bytes: float
    available: bool = True
    """FSDP needs more than one GPU to shard over."""

    @property
    def total_bytes(self) -> float:
        return self.states_bytes + self.activations_bytes


def activation_bytes(
    arch: Architecture, seq_len: int, micro_batch: int, checkpointing: bool
) -> int:
    """Activations autograd keeps for the backward pass, in bytes, with bf16 activations.

    Counted the way Korthikanti et al. (2022, "Reducing Activation Recomputation in Large
    Transformer Models", section 4) count them, for this model: no dropout, a fused attention
    kernel (so no seq_len^2 score matrix is kept), grouped-query attention, SwiGLU. With
    s = seq_len, b = micro_batch, h = d_model, k = kv_heads * head size, f = ffn_size, V = vocab:

        one block:    s*b*(14h + 4k + 8f)   (inputs of both norms and of every projection,
                                             q, k, v and output of attention, SwiGLU's three)
        output layer: s*b*(4h + 6V)         (final norm; bf16 logits and fp32 log-probabilities)

    Without checkpointing every block's are kept. With it, each block keeps only its input
    (2*s*b*h) and one block's full set is recomputed at a time during backward.
    """
    h, f = arch.d_model, arch.ffn_size
    k = arch.kv_heads * (arch.d_model // arch.heads)
    tokens = seq_len * micro_batch
    block = tokens * (14 * h + 4 * k + 8 * f)
    output = tokens * (4 * h + 6 * arch.vocab_size)
    if checkpointing:
        return arch.layers * 2 * tokens * h + block + output
    return arch.layers * block + output


def memory_estimates(
    arch: Architecture, hw: Hardware, seq_len: int, micro_batch: int
) -> list[Memory]:
    """Per-GPU memory under each of DDP and FSDP, without and with activation checkpointing."""
    n = parameter_count(arch)
    largest_unit = max(layer_parameter_count(arch), arch.vocab_size * arch.d_model)
    states = {
        "ddp": STATE_BYTES_PER_PARAMETER * n,
        "fsdp": STATE_BYTES_PER_PARAMETER * n / hw.gpus + 2 * 4 * largest_unit,
    }
    return [
        Memory(
            strategy,
            checkpointing,
            states[strategy],
            activation_bytes(arch, seq_len, micro_batch, checkpointing),
            available=strategy == "ddp" or hw.gpus > 1,
        )
        for strategy, checkpointing in STRATEGIES
    ]


@dataclass(frozen=True)
class Estimate:
    """What a training run would take: its memory per GPU, throughput and cost."""

    arch: Architecture
    hardware: Hardware
    seq_len: int
    micro_batch: int
    mfu: float
    tokens: int
    parameters: int
    flops_per_token: int
    memory: list[Memory]

    @property
    def fitting(self) -> list[Memory]:
        usable = self.hardware.usable_bytes
        return [m for m in self.memory if m.available and m.total_bytes <= usable]

    @property
    def tokens_per_second(self) -> float:
        hw = self.hardware
        peak = hw.gpus * hw.bf16_tflops * 1e12
        return peak * self.mfu * hw.interconnect_factor / self.flops_per_token

    @property
    def seconds(self) -> float:
        return self.tokens / self.tokens_per_second

    @property
    def gpu_hours(self) -> float:
        return self.seconds / 3600 * self.hardware.gpus


def plan(
    arch: Architecture, hw: Hardware, seq_len: int, micro_batch: int, mfu: float, tokens: int | None
) -> Estimate:
    """Estimates for training arch on hw; tokens=None means 20 per parameter (Chinchilla)."""
    arch = arch.resolved()
    if seq_len > arch.context_length:
        raise ValueError(
            f"--seq-len {seq_len} is longer than the context length {arch.context_length}:"
            " lower it or raise --context-length"
        )
    parameters = parameter_count(arch)
    return Estimate(
        arch=arch,
        hardware=hw,
        seq_len=seq_len,
        micro_batch=micro_batch,
        mfu=mfu,
        tokens=tokens or 20 * parameters,
        parameters=parameters,
        flops_per_token=training_flops_per_token(arch, seq_len),
        memory=memory_estimates(arch, hw, seq_len, micro_batch),
    )


def refusal(p: Estimate) -> str:
    """Why nothing fits, by how much, and what would make it fit."""
    hw = p.hardware
    leanest = min((m for m in p.memory if m.available), key=lambda m: m.total_bytes)
    name = leanest.strategy + (
        " with activation checkpointing" if leanest.activation_checkpointing else ""
    )
    short = (leanest.total_bytes - hw.usable_bytes) / GIB
    message = (
        f"does not fit: the leanest strategy, {name}, needs {leanest.total_bytes / GIB:.1f} GiB"
        f" per GPU and each {hw.gpu} has {hw.usable_bytes / GIB:.1f} GiB usable"
        f" ({USABLE_MEMORY:.0%} of {hw.memory_gib:g} GiB): {short:.1f} GiB short."
    )
    fixes = []
    per_sequence = leanest.activations_bytes / p.micro_batch
    largest_batch = math.floor((hw.usable_bytes - leanest.states_bytes) / per_sequence)
    if 1 <= largest_batch < p.micro_batch:
        fixes.append(f"lower --micro-batch to {largest_batch}")
    # FSDP + checkpointing: everything but the sharded states stays the same with more GPUs.
    fsdp = next(m for m in p.memory if m.strategy == "fsdp" and m.activation_checkpointing)
    unsharded = fsdp.total_bytes - STATE_BYTES_PER_PARAMETER * p.parameters / hw.gpus
    if hw.usable_bytes > unsharded:
        states = STATE_BYTES_PER_PARAMETER * p.parameters
        gpus = max(2, math.ceil(states / (hw.usable_bytes - unsharded)))
        fixes.append(f"use {gpus} or more GPUs (--nodes x --gpus-per-node) with FSDP")
    fixes.append("use a GPU with more memory (--gpu)")
    return message + " To fit: " + "; or ".join(fixes) + "."


def text(p: Estimate) -> str:
    """The plan for a person to read."""
    a, hw = p.arch, p.hardware
    lines = [
        f"model       {a.layers} layers, d_model {a.d_model}, {a.heads} heads ({a.kv_heads} kv),"
        f" ffn {a.ffn_size}, vocab {a.vocab_size}, {'tied' if a.tied_embeddings else 'untied'}",
        f"parameters  {p.parameters:,} ({p.parameters / 1e9:.2f} B)",
        f"compute     {p.flops_per_token:.3g} training FLOPs per token at seq_len {p.seq_len}"
        " (6N + 12 * layers * d_model * seq_len)",
        f"hardware    {hw.gpus} x {hw.gpu} ({hw.nodes} node(s) x {hw.gpus_per_node}),"
        f" {hw.memory_gib:g} GiB, {hw.usable_bytes / GIB:.1f} GiB usable;"
        f" {hw.bf16_tflops:g} bf16 TFLOP/s peak each",
        "",
        f"{f'memory per GPU, GiB (micro-batch {p.micro_batch} x {p.seq_len} tokens)':<54}"
        "  states  activations   total",
    ]
    for m in p.memory:
        name = m.strategy + (" + activation checkpointing" if m.activation_checkpointing else "")
        verdict = "fits" if m in p.fitting else ("needs >1 GPU" if not m.available else "too big")
        lines.append(
            f"  {name:<52}{m.states_bytes / GIB:8.1f}{m.activations_bytes / GIB:13.1f}"
            f"{m.total_bytes / GIB:8.1f}  {verdict}"
        )
    across = f", x{hw.interconnect_factor:g} for {hw.interconnect} across nodes" * (hw.nodes > 1)
    lines += [
        "",
        f"throughput  {p.tokens_per_second:,.0f} tokens/s at {p.mfu:.0%} MFU{across}",
        f"time        {p.tokens:,} tokens: {_duration(p.seconds)}, {p.gpu_hours:,.1f} GPU-hours",
    ]
    return "\n".join(lines)


def as_dict(p: Estimate) -> dict:
    """The plan for a program to read: bytes, seconds, FLOPs."""
    usable = p.hardware.usable_bytes
    return {
        "architecture": p.arch.model_dump(mode="json", by_alias=True, exclude_none=True),
        "hardware": asdict(p.hardware) | {"gpus": p.hardware.gpus, "usable_bytes": usable},
        "seq_len": p.seq_len,
        "micro_batch": p.micro_batch,
        "parameters": p.parameters,
        "flops_per_token": p.flops_per_token,
        "memory": [
            asdict(m) | {"total_bytes": m.total_bytes, "fits": m in p.fitting} for m in p.memory
        ],
        "fits": bool(p.fitting),
        "error": None if p.fitting else refusal(p),
        "mfu": p.mfu,
        "tokens": p.tokens,
        "tokens_per_second": p.tokens_per_second,
        "seconds": p.seconds,
        "gpu_hours": p.gpu_hours,
    }


def add_arguments(sub: argparse.ArgumentParser) -> None:
    shape = sub.add_argument_group("architecture (a preset, or the sizes; sizes override it)")
    shape.add_argument("--preset", choices=sorted(PRESETS))
    for flag in ("layers", "d-model", "heads", "kv-heads", "ffn-size", "context-length"):
        shape.add_argument(f"--{flag}", type=int)
    shape.add_argument("--vocab-size", type=int, default=32000)
    shape.add_argument("--tied-embeddings", action="store_true")
    run = sub.add_argument_group("hardware and run")
    run.add_argument("--gpu", choices=list(GPUS), default="H100-80GB")
    run.add_argument("--gpu-memory-gb", type=float, help="override the GPU's memory, in GiB")
    run.add_argument("--nodes", type=int, default=1)
    run.add_argument("--gpus-per-node", type=int, default=8)
    run.add_argument(
        "--interconnect",
        choices=list(INTERCONNECTS),
        default="ib",
        help="link between nodes: scales throughput by a stated rule-of-thumb factor",
    )
    run.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization, 0-1")
    run.add_argument("--seq-len", type=int, help="training sequence length (default: context)")
    run.add_argument("--micro-batch", type=int, default=8, help="sequences per GPU per step")
    run.add_argument("--tokens", type=int, help="tokens to train on (default: 20 per parameter)")
    run.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    try:
        p = plan_from_args(args)
    except ValueError as e:
        print(f"lmforge plan: {e}", file=sys.stderr)
        return 2
    print(json.dumps(as_dict(p), indent=2) if args.json else text(p))
    if not p.fitting:
        print(f"lmforge plan: {refusal(p)}", file=sys.stderr)
        return 2
    return 0


def plan_from_args(args: argparse.Namespace) -> Estimate:
    """The Estimate the command line asks for; ValueError saying which flag is wrong."""
    for flag in ("nodes", "gpus_per_node", "micro_batch", "tokens", "seq_len", "gpu_memory_gb"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu is a fraction of peak: between 0 and 1, got {args.mfu}")
    sizes = ("layers", "d_model", "heads", "kv_heads", "ffn_size", "context_length")
    fields = {f: getattr(args, f) for f in sizes if getattr(args, f) is not None}
    try:
        arch = Architecture(
            preset=args.preset,
            vocab_size=args.vocab_size,
            tied_embeddings=args.tied_embeddings,
            **fields,
        ).resolved()
    except ValidationError as error:
        raise ValueError("; ".join(_flag_error(e) for e in error.errors())) from None
    gpu = GPUS[args.gpu]
    hardware = Hardware(
        gpu=args.gpu,
        memory_gib=args.gpu_memory_gb or gpu.memory_gib,
        bf16_tflops=gpu.bf16_tflops,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        interconnect=args.interconnect,
    )
    seq_len = args.seq_len or arch.context_length
    return plan(arch, hardware, seq_len, args.micro_batch, args.mfu, args.tokens)


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.0f} s"


def _flag_error(error: dict) -> str:
    """A pydantic error on Architecture, named by the flag that sets the field."""
    field = (field_path(error["loc"]) + ((error.get("ctx") or {}).get("field") or "")).lstrip(".")
    flag = "".join("-" + c.lower() if c.isupper() else c for c in field).replace("_", "-")
    return f"--{flag}: {error['msg']}" if flag else error["msg"]
