"""The train image's packages resolve for the image, on both of Lambda's architectures.

Building the image needs Docker, which CI does not have (tests/unit/test_template.py checks
the Dockerfile's pins). Some of what would break that build can still be caught here: a pinned
package with no wheel for the image's Python or CPU (tensorflow-cpu has none for aarch64),
or one that needs a newer glibc than Amazon Linux 2023's. pip resolves the Dockerfile's
requirement files as pip inside the image would: binary wheels only, the base image's
CPython, manylinux up to glibc 2.34. It reads package metadata from the index; nothing is
installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from dlpipe.shared.layer_target import MACHINES
from orchestrator.functions import REPO_ROOT

DOCKERFILE = REPO_ROOT / "functions" / "train" / "Dockerfile"
GLIBC_MINOR = 34                                   # Amazon Linux 2023


def image_python() -> str:
    """3.12 from `FROM public.ecr.aws/lambda/python:3.12.2026...`."""
    match = re.search(r"^FROM\s+\S+/lambda/python:(\d+\.\d+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"{DOCKERFILE} does not start from an AWS Lambda Python base image"
    return match.group(1)


def image_requirements(python: str, machine: str) -> list[str]:
    """The requirement files the Dockerfile installs, markers evaluated for the image."""
    env = {"platform_machine": machine, "python_version": python, "python_full_version": f"{python}.0",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    names = re.findall(r"-r\s+\S*?([\w.-]+\.txt)", DOCKERFILE.read_text())
    assert names, f"{DOCKERFILE} installs no requirement files"
    kept = []
    for name in names:
        for line in (REPO_ROOT / "requirements" / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            assert not line.startswith("-"), f"requirements/{name}: {line!r} (nested files are not followed here)"
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(env):
                requirement.marker = None
                kept.append(str(requirement))
    return kept


def image_constraints() -> list[str]:
    """`-c FILE` for each constraint file the Dockerfile installs with (the lock), as paths in the repository."""
    names = re.findall(r"-c\s+\S*?([\w.-]+\.txt)", DOCKERFILE.read_text())
    return [arg for name in names for arg in ("-c", str(REPO_ROOT / "requirements" / name))]


@pytest.mark.slow
@pytest.mark.parametrize("architecture", sorted(MACHINES))
def test_the_train_images_packages_have_wheels_for_its_python_and_cpu(architecture, tmp_path):
    python, machine = image_python(), MACHINES[architecture]
    requirements = image_requirements(python, machine)
    (tmp_path / "requirements.txt").write_text("\n".join(requirements) + "\n")
    platforms = [f"manylinux_2_{n}_{machine}" for n in range(GLIBC_MINOR, 4, -1)]
    platforms += [f"manylinux{tag}_{machine}" for tag in ("2014", "2010", "1")]  # pre-PEP 600 spellings
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--only-binary=:all:", "--implementation", "cp",
               "--python-version", python, *(arg for p in platforms for arg in ("--platform", p)),
               "--target", str(tmp_path / "target"), "--report", str(tmp_path / "report.json"),
               "-r", str(tmp_path / "requirements.txt"), *image_constraints()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (f"the train image's packages do not resolve for python{python} on {machine}:\n"
                                  + "\n".join(line for line in done.stderr.splitlines()
                                              if "is ignored" not in line)[-3000:])
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.loads((tmp_path / "report.json").read_text())["install"]}
    for line in requirements:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in resolved, f"{name} is not in the resolution: {sorted(resolved)}"
        assert requirement.specifier.contains(resolved[name]), (name, resolved[name], str(requirement.specifier))
    tensorflow = "tensorflow-cpu" if machine == "x86_64" else "tensorflow"
    assert tensorflow in resolved, f"no {tensorflow} for {machine}: {sorted(resolved)}"


IMPORT_WITH_ONLY_THE_IMAGE = """
import sys
# Nothing from the checkout: only what the image's COPY lines put in the task root.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()]
sys.path[:] = [p for p in sys.path if "dlpipe" not in p and p not in ("", ".")]
sys.path.insert(0, sys.argv[1])
import importlib
import pkgutil

import app
import dlpipe.train
from dlpipe.train import worker
assert app.handler and worker.run_train
# Every module of dlpipe.train: the package holds exactly what the image runs, nothing that needs more.
assert all(p.startswith(sys.argv[1]) for p in dlpipe.train.__path__), dlpipe.train.__path__
for module in pkgutil.iter_modules(dlpipe.train.__path__, "dlpipe.train."):
    importlib.import_module(module.name)
print(sorted(m for m in sys.modules if m.startswith("dlpipe.")))
"""


def test_the_train_function_imports_with_only_what_the_image_copies(tmp_path):
    """The image copies wire/, shared/ and train/ (no augment, predict or publish); train/ must need no more."""
    import shutil

    root = tmp_path / "task"
    copies = re.findall(r"^COPY\s+(.+?)\s+\$\{LAMBDA_TASK_ROOT\}/(\S*)$", DOCKERFILE.read_text(), re.MULTILINE)
    for sources, target in copies:
        if sources.startswith("requirements"):
            continue
        for source in sources.split():
            src, dst = REPO_ROOT / source, root / target
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                (dst if target.endswith("/") or not target else dst.parent).mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst / src.name if target.endswith("/") or not target else dst)
    assert not (root / "dlpipe" / "predict").exists() and not (root / "dlpipe" / "publish").exists()
    done = subprocess.run([sys.executable, "-c", IMPORT_WITH_ONLY_THE_IMAGE, str(root)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dlpipe.train.worker" in done.stdout and "dlpipe.train.batches" in done.stdout
    assert "dlpipe.predict" not in done.stdout
