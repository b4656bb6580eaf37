"""spec.resources.podTemplate merged into rendered pods, strategic-merge style."""

import copy

import pytest

from lmforge.operator.render.overlay import merge_pod_template
from lmforge.operator.stages.base import SpecError

BASE = {
    "metadata": {"name": "p", "labels": {"lmforge.dev/role": "worker"}},
    "spec": {
        "restartPolicy": "Never",
        "hostname": "p",
        "containers": [
            {
                "name": "trainer",
                "image": "a",
                "env": [{"name": "A", "value": "1"}],
                "volumeMounts": [{"name": "config", "mountPath": "/etc/lmforge"}],
            }
        ],
        "volumes": [{"name": "config", "configMap": {"name": "c"}}],
    },
}

CASES = [
    pytest.param(
        {"spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}]}},
        lambda p: [v["name"] for v in p["spec"]["volumes"]] == ["config", "data"],
        id="volumes appended",
    ),
    pytest.param(
        {"spec": {"containers": [{"name": "trainer", "env": [{"name": "B", "value": "2"}]}]}},
        lambda p: (
            [e["name"] for e in p["spec"]["containers"][0]["env"]] == ["A", "B"]
            and p["spec"]["containers"][0]["image"] == "a"
        ),
        id="container merged by name, env appended",
    ),
    pytest.param(
        {"spec": {"containers": [{"name": "trainer", "env": [{"name": "A", "value": "9"}]}]}},
        lambda p: p["spec"]["containers"][0]["env"] == [{"name": "A", "value": "9"}],
        id="env replaced by name",
    ),
    pytest.param(
        {"spec": {"containers": [{"name": "sidecar", "image": "s"}]}},
        lambda p: [c["name"] for c in p["spec"]["containers"]] == ["trainer", "sidecar"],
        id="sidecar appended",
    ),
    pytest.param(
        {
            "spec": {
                "containers": [
                    {"name": "trainer", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
                ]
            }
        },
        lambda p: len(p["spec"]["containers"][0]["volumeMounts"]) == 2,
        id="mounts appended",
    ),
    pytest.param(
        {"spec": {"restartPolicy": "Always", "hostname": "x", "priorityClassName": "high"}},
        lambda p: (
            p["spec"]["restartPolicy"] == "Never"
            and p["spec"]["hostname"] == "p"
            and p["spec"]["priorityClassName"] == "high"
        ),
        id="protected fields kept, others set",
    ),
    pytest.param(
        {
            "metadata": {
                "labels": {"lmforge.dev/role": "evil", "team": "a"},
                "annotations": {"sidecar.istio.io/inject": "false"},
            }
        },
        lambda p: (
            p["metadata"]["labels"] == {"lmforge.dev/role": "worker", "team": "a"}
            and p["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        ),
        id="our labels win, others added",
    ),
]


@pytest.mark.parametrize(("overlay", "check"), CASES)
def test_merge(overlay, check):
    before, overlay_before = copy.deepcopy(BASE), copy.deepcopy(overlay)
    merged = merge_pod_template(BASE, overlay)
    assert check(merged)
    assert before == BASE and overlay == overlay_before  # inputs untouched


def test_no_overlay_is_the_pod_itself():
    assert merge_pod_template(BASE, None) is BASE


def test_not_a_pod_template_names_the_field():
    with pytest.raises(SpecError, match=r"^spec\.resources\.podTemplate: .*\['containers'\]"):
        merge_pod_template(BASE, {"containers": []})
