"""images/: the Dockerfiles install what pyproject.toml pins, in layers from the slowest-changing
to the fastest (built and run for real by images/build.sh and the cluster tiers)."""

import re
import runpy
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
requirements = runpy.run_path(str(ROOT / "images" / "requirements.py"))["requirements"]
DOCKERFILES = sorted((ROOT / "images").glob("*.Dockerfile"))


def test_requirements_expand_the_extras_that_name_lmforge():
    serve = requirements(PROJECT, ["serve"])
    assert serve[: len(PROJECT["dependencies"])] == PROJECT["dependencies"]
    assert "torch==2.15.0" in serve and "fastapi==0.163.2" in serve  # serve -> train -> torch
    assert not any(r.startswith("lmforge") for r in serve)
    assert len(serve) == len(set(serve))
    assert "kopf==1.45.2" not in serve and "kopf==1.45.2" in requirements(PROJECT, ["operator"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pin_pyprojects_torch_and_copy_the_code_last(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", text, re.M)  # the public default
    pinned = re.search(r"^ARG TORCH=(\S+)$", text, re.M)
    if pinned:
        assert pinned[1] in PROJECT["optional-dependencies"]["train"]
    steps = re.findall(r"^(COPY|RUN) (.*)$", text, re.M)
    code = [
        i
        for i, (op, what) in enumerate(steps)
        if op == "COPY" and what.startswith(("operator", "jobs"))
    ]
    deps = [i for i, (op, what) in enumerate(steps) if "requirements.py" in what and op == "RUN"]
    assert deps and code and max(deps) < min(code), steps  # a code change keeps the deps layer
    assert steps[-1][1].startswith("pip install --no-deps /src")


def test_the_build_context_is_only_what_the_images_copy():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") :][:1] == ["*"]
    copied = {w for f in DOCKERFILES for w in re.findall(r"^COPY (.*) /src/", f.read_text(), re.M)}
    kept = {line[1:] for line in ignored if line.startswith("!")}
    assert {p for line in copied for p in line.split()} <= kept
