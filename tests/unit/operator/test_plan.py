"""`lmforge plan`: hand-checked estimates, and refusals that say by how much and what to change."""

import json
import re

import pytest

from lmforge.operator import plan
from lmforge.operator.cli import main, parser

GIB = 2**30


def planned(*flags: str) -> plan.Estimate:
    return plan.plan_from_args(parser().parse_args(["plan", *flags]))


def by_strategy(p: plan.Estimate) -> dict[tuple[str, bool], plan.Memory]:
    return {(m.strategy, m.activation_checkpointing): m for m in p.memory}


def test_tiny_on_two_gpus_matches_hand_computed_values():
    p = planned(
        "--preset", "tiny", "--gpus-per-node", "2", "--micro-batch", "2", "--tokens", "1000000000"
    )
    # tiny, vocab 32000: 4 layers of 786,944 + embedding and lm_head of 32000 x 256 + final norm.
    assert p.parameters == 4 * 786_944 + 2 * 8_192_000 + 256 == 19_532_032
    memory = by_strategy(p)
    assert memory["ddp", False].states_bytes == 16 * 19_532_032 == 312_512_512
    # Sharded over 2, plus two gathered units in bf16 weights + grads; the largest is the embedding.
    assert memory["fsdp", False].states_bytes == 312_512_512 / 2 + 2 * 4 * 8_192_000
    # 512 tokens; h 256, kv width 128, ffn 768, vocab 32000.
    block = 512 * (14 * 256 + 4 * 128 + 8 * 768)  # = 5,242,880
    output = 512 * (4 * 256 + 6 * 32000)  # = 98,828,288
    assert memory["ddp", False].activations_bytes == 4 * block + output == 119_799_808
    assert memory["ddp", True].activations_bytes == 4 * 2 * 512 * 256 + block + output
    assert p.flops_per_token == 71_185_920
    assert p.tokens_per_second == pytest.approx(2 * 989e12 * 0.4 / 71_185_920)
    assert p.seconds == pytest.approx(1e9 / p.tokens_per_second)
    assert p.gpu_hours == pytest.approx(2 * p.seconds / 3600)


def test_1b_on_eight_h100_fits_under_fsdp(capsys):
    assert main(["plan", "--preset", "1b", "--gpu", "H100-80GB", "--gpus-per-node", "8"]) == 0
    memory = by_strategy(planned("--preset", "1b", "--gpu", "H100-80GB", "--gpus-per-node", "8"))
    assert memory["fsdp", True].total_bytes < memory["fsdp", False].total_bytes < 71.6 * GIB
    out = capsys.readouterr().out
    assert re.search(r"fsdp \+ activation checkpointing .* fits", out)


def test_1b_on_one_l4_is_refused_saying_by_how_much(capsys):
    assert main(["plan", "--preset", "1b", "--gpu", "L4", "--gpus-per-node", "1"]) == 2
    error = capsys.readouterr().err
    leanest = by_strategy(planned("--preset", "1b", "--gpu", "L4", "--gpus-per-node", "1"))
    short = (leanest["ddp", True].total_bytes - 22.5 * 0.9 * GIB) / GIB
    assert short > 0
    assert f"{short:.1f} GiB short" in error
    assert "ddp with activation checkpointing" in error
    assert "--micro-batch to 5" in error


def test_suggested_micro_batch_and_gpu_count_do_fit(capsys):
    l4 = ["plan", "--preset", "1b", "--gpu", "L4"]
    assert main([*l4, "--gpus-per-node", "1"]) == 2
    error = capsys.readouterr().err
    batch = re.search(r"--micro-batch to (\d+)", error).group(1)
    gpus = re.search(r"use (\d+) or more GPUs", error).group(1)
    assert main([*l4, "--gpus-per-node", "1", "--micro-batch", batch]) == 0
    assert main([*l4, "--gpus-per-node", "1", "--micro-batch", str(int(batch) + 1)]) == 2
    assert main([*l4, "--gpus-per-node", gpus]) == 0


def test_fsdp_needs_more_than_one_gpu():
    memory = by_strategy(planned("--preset", "tiny", "--gpus-per-node", "1"))
    assert not memory["fsdp", True].available
    assert memory["ddp", True].available


def test_interconnect_slows_only_runs_across_nodes():
    per_gpu = {}
    for nodes in ("1", "2"):
        for link in plan.INTERCONNECTS:
            p = planned("--preset", "tiny", "--nodes", nodes, "--interconnect", link)
            per_gpu[nodes, link] = p.tokens_per_second / p.hardware.gpus
    assert per_gpu["1", "ethernet"] == per_gpu["1", "nvlink"]
    assert per_gpu["2", "ethernet"] == pytest.approx(0.7 * per_gpu["2", "nvlink"])


def test_gpu_memory_override_changes_the_verdict():
    small_gpu = ["plan", "--preset", "125m", "--gpus-per-node", "1", "--gpu-memory-gb", "4"]
    assert main(small_gpu) == 2
    assert main([*small_gpu[:-1], "40"]) == 0


def test_json_output(capsys):
    assert main(["plan", "--preset", "1b", "--gpu", "L4", "--gpus-per-node", "1", "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is False
    assert "GiB short" in out["error"]
    assert out["parameters"] == 1_104_218_112
    assert [m["strategy"] for m in out["memory"]] == ["ddp", "ddp", "fsdp", "fsdp"]
    assert out["architecture"]["kvHeads"] == 8


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--preset", "tiny", "--mfu", "40"], "--mfu is a fraction"),
        (["--preset", "tiny", "--heads", "5"], "--kv-heads: heads must be a multiple of kvHeads"),
        (["--preset", "tiny", "--seq-len", "512"], "--seq-len 512 is longer than the context"),
        (["--preset", "tiny", "--nodes", "0"], "--nodes must be positive"),
        (["--layers", "2"], "set a preset, or all of layers"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(capsys, flags, message):
    assert main(["plan", *flags]) == 2
    assert message in capsys.readouterr().err
