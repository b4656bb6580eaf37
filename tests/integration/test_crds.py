"""The generated CRDs on a real API server: installed, samples accepted, invalid manifests
rejected with their messages, and `kubectl get` showing the printer columns."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").rglob("*.yaml"))
ONE_PER_KIND = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "manifests" / "invalid").glob("*.yaml"))
EXPECT = "lmforge.dev/expect-error"


def _served(definition: dict) -> dict:
    (version,) = [v for v in definition["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version


def _header(definition: dict) -> list[str]:
    """The header kubectl prints: NAME and each priority-0 printer column, upper-cased."""
    columns = _served(definition).get("additionalPrinterColumns") or []
    return ["NAME", *(c["name"].upper() for c in columns if not c.get("priority"))]


def _split(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_crds_are_established_with_names_and_category(cluster, crds):
    assert len(crds) == 6
    for name, definition in crds.items():
        status = cluster.get("crd", name)["status"]
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions["Established"] == "True", (name, status["conditions"])
        assert conditions["NamesAccepted"] == "True", (name, status["conditions"])
        assert status["acceptedNames"]["categories"] == ["lmforge"], name
        assert status["acceptedNames"]["shortNames"] == definition["spec"]["names"]["shortNames"]


@pytest.mark.parametrize("file", SAMPLES, ids=lambda f: str(f.relative_to(ROOT / "manifests")))
def test_sample_passes_server_side_dry_run(cluster, crds, namespace, file):
    done = cluster("apply", "--dry-run=server", "-n", namespace, "-f", str(file))
    assert "(server dry run)" in done.stdout


@pytest.mark.parametrize("file", INVALID, ids=lambda f: f.name)
def test_invalid_manifest_is_rejected_by_the_api_server(cluster, crds, namespace, file):
    expected = yaml.safe_load(file.read_text())["metadata"]["annotations"][EXPECT].splitlines()
    done = cluster("apply", "--dry-run=server", "-n", namespace, "-f", str(file), check=False)
    assert done.returncode != 0, f"accepted by the API server:\n{done.stdout}"
    # The same lines `lmforge validate` prints, in one line of the API server's message.
    lines = done.stderr.splitlines()
    assert any(all(part in line for part in expected) for line in lines), (expected, done.stderr)


@pytest.mark.parametrize("file", ONE_PER_KIND, ids=lambda f: f.name)
def test_kubectl_get_shows_printer_columns(cluster, crds, namespace, file):
    kind = yaml.safe_load(file.read_text())["kind"]
    (definition,) = [d for d in crds.values() if d["spec"]["names"]["kind"] == kind]
    cluster("apply", "-n", namespace, "-f", str(file))
    names = definition["spec"]["names"]
    # Qualified, since `deployments` alone means apps/v1 Deployments; and by short name.
    for resource in (f"{names['plural']}.lmforge.dev", names["shortNames"][0]):
        output = cluster("get", resource, "-n", namespace).stdout
        assert _split(output.splitlines()[0]) == _header(definition), (resource, output)


def test_kubectl_get_lmforge_lists_every_kind_with_its_columns(cluster, crds, namespace):
    for file in ONE_PER_KIND:
        cluster("apply", "-n", namespace, "-f", str(file))
    output = cluster("get", "lmforge", "-n", namespace).stdout
    tables = [block.splitlines() for block in output.strip().split("\n\n")]
    seen = {}
    for header, *rows in tables:
        for row in rows:
            seen[row.split()[0].split("/")[0]] = _split(header)
    for definition in crds.values():
        resource = f"{definition['spec']['names']['kind'].lower()}.lmforge.dev"
        assert seen.get(resource) == _header(definition), (resource, output)
