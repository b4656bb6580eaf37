"""Every job as a torchx AppDef: the pods' torchrun command per replica, and `torchx run` of a
PretrainJob with torchx's own local scheduler, two torchrun replicas meeting as two nodes."""

import json
import subprocess
from pathlib import Path

import pytest
from torchx import specs

from lmforge.operator.api.common import Lineage, PodResources
from lmforge.operator.api.events import parse
from lmforge.operator.local.components import stage
from lmforge.operator.stages.appdef import appdef
from lmforge.operator.stages.base import Description

from .test_run import MINI, run, write


def test_a_gang_is_a_replica_per_node_meeting_at_the_first_or_all_ranks_on_one_machine():
    described = Description(Lineage(), Lineage(), "lmforge.jobs.train", ranks=(2, 4))
    resources = PodResources(cpu="1500m", memory="3Gi", gpus=1)
    app = appdef(described, "/c.json", name="tiny", role="worker", resources=resources)
    (role,) = app.roles
    assert role.num_replicas == 2 and role.entrypoint == "bash"
    assert (role.resource.cpu, role.resource.memMB, role.resource.gpu) == (2, 3072, 1)
    values = specs.macros.Values(img_root="", app_id="tiny-1", replica_id="1",
                                 rank0_env="TORCHX_RANK0_HOST")  # fmt: skip
    line = values.apply(role).args[1]
    for part in ("--nnodes=2", "--nproc-per-node=4", "--node-rank=1", "--rdzv-backend=static",
                 "--master-addr=${TORCHX_RANK0_HOST:=localhost}", "--master-port=29500",
                 "-m lmforge.jobs.train --config /c.json"):  # fmt: skip
        assert part in line, line
    local = appdef(described, "/c.json", name="tiny", role="worker", one_machine=True)
    (role,) = local.roles
    assert role.num_replicas == 1 and role.resource == specs.NULL_RESOURCE
    assert [role.entrypoint, *role.args] == ["python", "-m", "torch.distributed.run",
        "--standalone", "--nproc-per-node=8", "-m", "lmforge.jobs.train", "--config", "/c.json"]  # fmt: skip


def test_a_job_whose_references_did_not_run_is_refused(tmp_path):
    files = write(tmp_path / "files")
    with pytest.raises(ValueError, match=r"reads what is not ready.*`lmforge run` its references"):
        stage(str(files / "02-pretrainjob.yaml"), "mini-model", str(tmp_path / "state"))


def test_torchx_run_trains_a_pretrainjob_as_two_nodes(tmp_path):
    files, state = write(tmp_path / "files", steps=6), tmp_path / "state"
    data = tmp_path / "data"
    data.mkdir()
    (data / "01-dataset.yaml").write_text((files / "01-dataset.yaml").read_text())
    assert run(data, state) == 0
    two = tmp_path / "two.yaml"
    two.write_text(MINI["02-pretrainjob.yaml"].replace("STEPS", "6").replace(
        "{processesPerNode: 2}", "{nodes: 2, processesPerNode: 1}"))  # fmt: skip
    done = subprocess.run(
        ["torchx", "run", "-s", "local_cwd", "-cfg", f"log_dir={tmp_path / 'logs'}", "--wait",
         "lmforge.operator.local.components:stage", "--file", str(two), "--name", "mini-model",
         "--state", str(state)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0 and "SUCCEEDED" in done.stderr, done.stderr[-3000:]
    (first,) = Path(tmp_path / "logs").glob("torchx/mini-model-*/worker/0/stdout.log")
    found = parse(first.read_text())
    assert found[0]["event"] == "start" and found[0]["worldSize"] == 2
    assert found[-1]["event"] == "done" and found[-1]["step"] == 6
    assert not parse(first.parent.parent.joinpath("1", "stdout.log").read_text())  # rank 0 tells
    config = json.loads((state / "runs" / "pretrainjob" / "mini-model" / "config.json").read_text())
    assert config["datasetUri"] == status_output(state)
    model = Path(found[-1]["output"].removeprefix("file://"))
    assert (model / "model.safetensors").exists()


def status_output(state: Path) -> str:
    record = json.loads((state / "state" / "dataset" / "mini.json").read_text())
    return next(o["uri"] for o in record["status"]["lineage"]["outputs"])
