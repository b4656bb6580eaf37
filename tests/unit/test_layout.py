"""The distribution's shape: import names, the operator's dependencies, packaged folders."""

import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STDLIB = sysconfig.get_paths()["stdlib"]


def run_python(code: str) -> str:
    # From the repository root, where a folder named operator/ sits first on sys.path.
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_operator_package_imports_no_torch():
    loaded = run_python(
        "import sys, lmforge.operator.cli, lmforge.operator.api, lmforge.operator.validate;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'jobs')))"
    )
    assert loaded == "[]"


def test_standard_library_operator_is_not_shadowed():
    where = run_python(
        "import lmforge.operator.cli, operator, enum;"
        "print(operator.__file__, operator.itemgetter(1)([0, 7]))"
    )
    assert where == f"{STDLIB}/operator.py 7"


def test_every_package_folder_is_packaged():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {folder: name for name, folder in config["package-dir"].items()}
    found = set()
    for folder, name in mapped.items():
        for init in (ROOT / folder).rglob("*.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *relative.parts]))
    assert found <= set(config["packages"])


def test_the_jobs_contract_names_every_part_of_the_operator_but_its_api():
    """import-linter cannot forbid "all of lmforge.operator but api": the contract lists each
    part, so a new module or package of the operator must be added to it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (jobs,) = [c for c in config["contracts"] if c.get("source_modules") == ["lmforge.jobs"]]
    parts = {p.stem for p in (ROOT / "operator").iterdir() if p.suffix == ".py" or p.is_dir()}
    parts -= {"api", "__pycache__"}
    assert {f"lmforge.operator.{p}" for p in parts} == set(jobs["forbidden_modules"])
