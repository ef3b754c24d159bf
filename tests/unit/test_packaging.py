"""One source of truth for versions: ranges in requirements/*.txt, exact pins in the lock.

pyproject.toml reads the range files as the package's dependencies and extras; `make setup`,
the layer's makefile and the train image's Dockerfile all install with the lock
(requirements/constraints.txt) as pip constraints. These tests keep the pieces in step.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from orchestrator.functions import REPO_ROOT

REQUIREMENTS = REPO_ROOT / "requirements"
LOCK = REQUIREMENTS / "constraints.txt"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
# sam.txt is aws-sam-cli's own venv (it pins boto3 and pydantic below ours): exactly pinned, outside the lock.
OWN_VENV = {"sam.txt"}


def requirements_in(path: Path) -> list[Requirement]:
    lines = (raw.split("#", 1)[0].strip() for raw in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and not name.startswith("-"), f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def range_files() -> list[Path]:
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]
    files = list(dynamic["dependencies"]["file"])
    files += [f for extra in dynamic["optional-dependencies"].values() for f in extra["file"]]
    return [REPO_ROOT / f for f in files]


def pip_install_lines(text: str) -> list[list[str]]:
    """The words of every `pip install` command in a makefile or Dockerfile (continuations joined)."""
    joined = re.sub(r"\\\n", " ", text)
    commands = []
    for line in joined.splitlines():
        for part in re.split(r"&&|;|\|\|", line):
            words = shlex.split(part.replace("$(", "(").replace("'", ""))
            if "install" in words and any(w == "pip" or w.endswith("/pip") or w == "(PIP)" for w in words):
                commands.append(words)
    return commands


def files_given(words: list[str], *options: str) -> set[str]:
    return {Path(words[i + 1].strip('"')).name for i, w in enumerate(words[:-1]) if w in options}


def test_the_package_declares_its_dependencies_from_the_range_files():
    assert "dependencies" not in PYPROJECT["project"], "declared from files (tool.setuptools.dynamic), not inline"
    assert set(PYPROJECT["project"]["dynamic"]) == {"dependencies", "optional-dependencies"}
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"]["file"] == ["requirements/layer.txt", "requirements/cli.txt"]
    assert set(dynamic["optional-dependencies"]) == {"train", "dev"}
    assert "requirements/train.txt" in dynamic["optional-dependencies"]["train"]["file"]
    listed = {p.name for p in range_files()} | OWN_VENV | {LOCK.name}
    assert listed == {p.name for p in REQUIREMENTS.glob("*.txt")}, "a requirements file that nothing installs"


@pytest.mark.parametrize("path", range_files(), ids=lambda p: p.name)
def test_range_files_hold_ranges_that_admit_the_locked_versions(path):
    pins = lock()
    for requirement in requirements_in(path):
        name = canonicalize_name(requirement.name)
        operators = {spec.operator for spec in requirement.specifier}
        assert operators and not operators & {"==", "==="}, (
            f"{path.name}: {requirement} -- give a range here; the exact version belongs in constraints.txt")
        assert name in pins, f"{path.name}: {requirement.name} is not in constraints.txt: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{path.name}: {requirement} does not admit the locked {name}=={pins[name]}")


def test_the_aarch64_images_tensorflow_is_locked_at_tensorflow_cpus_version():
    pins = lock()
    assert pins["tensorflow"] == pins["tensorflow-cpu"]


def test_make_setup_the_layer_and_the_train_image_all_install_with_the_lock():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^LOCK\s*:?=\s*requirements/constraints\.txt$", makefile, re.MULTILINE)
    # The dev venv's install of the package (`make lock` alone resolves afresh, without the lock).
    setup = [w for w in pip_install_lines(makefile) if w[0] == "(PY)" and any(".[" in word for word in w)]
    assert len(setup) == 1 and files_given(setup[0], "-c", "--constraint") == {"(LOCK)"}, setup

    layer = pip_install_lines((REPO_ROOT / "layers" / "shared" / "Makefile").read_text())
    assert len(layer) == 1
    assert files_given(layer[0], "-r", "--requirement") == {"layer.txt"}
    assert files_given(layer[0], "-c", "--constraint") == {LOCK.name}

    dockerfile = (REPO_ROOT / "functions" / "train" / "Dockerfile").read_text()
    image = pip_install_lines(dockerfile)
    assert len(image) == 1
    assert files_given(image[0], "-r", "--requirement") == {"layer.txt", "train.txt"}
    assert files_given(image[0], "-c", "--constraint") == {LOCK.name}
    copied = {Path(w).name for line in dockerfile.splitlines() if line.startswith("COPY") for w in line.split()[1:-1]}
    assert {"layer.txt", "train.txt", LOCK.name} <= copied


def test_the_venv_the_tests_run_in_is_the_locked_one():
    """Drift (a package upgraded by hand) shows here before it shows as a difference on Lambda."""
    drift = {}
    for name, version in lock().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # another platform's package (tensorflow beside tensorflow-cpu)
        if installed != version:
            drift[name] = f"installed {installed}, locked {version}"
    assert not drift, f"the venv differs from constraints.txt (make setup, or make lock): {drift}"


@pytest.mark.parametrize(("argv", "what"), [
    (["export", "--run", "r1"], "export needs keras"),
    (["import-onnx", "model.onnx", "--labels", "labels.txt"], "import-onnx needs keras"),
    (["train", "--dataset", "d", "--run", "r1", "--rounds", "1"], "training on this machine needs keras"),
])
def test_commands_that_need_the_train_extra_say_how_to_install_it(argv, what, tmp_path, monkeypatch, capsys):
    """`pip install .` without [train]: one line saying what to install, before any work, not a traceback."""
    from orchestrator.cli import main
    from orchestrator.commands import importlib as commands_importlib

    real = commands_importlib.util.find_spec
    monkeypatch.setattr(commands_importlib.util, "find_spec", lambda name: None if name == "keras" else real(name))
    assert main(["--home", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {what}, not installed here") and "pip install '.[train]'" in err
    assert err.count("\n") == 1 and not (tmp_path / "models").exists()
