"""Dependencies are declared once and agree: requirements.txt pins, pyproject's ranges admit the pins, the conda
environment pins the same versions."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return {canonical(name): version for name, version in (line.split("==") for line in lines if line)}


def test_pyproject_ranges_admit_the_pinned_versions_and_name_nothing_unpinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins()
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for group in project["optional-dependencies"].values() for r in group]
    for requirement in declared:
        name = canonical(requirement.name)
        assert name in pinned, f"{requirement.name} is declared in pyproject.toml but not pinned in requirements.txt"
        assert requirement.specifier.contains(pinned[name]), f"{requirement} does not admit the pinned {pinned[name]}"
    runtime = {canonical(Requirement(r).name) for r in project["dependencies"]}
    extras = {canonical(Requirement(r).name) for group in project["optional-dependencies"].values() for r in group}
    assert set(pinned) == runtime | extras  # every pin is a dependency of the package, its tests or its benchmark


def test_the_conda_environment_pins_the_runtime_versions():
    environment = yaml.safe_load((ROOT / "src/influence_signals/workflow/envs/pipeline.yaml").read_text())
    pip = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    conda = {canonical(name): version for name, version in (line.split("==") for line in pip)}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {canonical(Requirement(r).name) for r in project["dependencies"]}
    pinned = pins()
    assert set(conda) == runtime and all(conda[name] == pinned[name] for name in conda)
