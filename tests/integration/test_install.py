"""`pip install .` gives a working `orchestrator`, outside the checkout.

The wheel is built from a copy of what pyproject.toml packages and installed into a fresh venv
with --no-deps; the packages it declares come from the venv running the tests (a .pth line), so
nothing is downloaded. `pip check` then holds the declared dependencies against them, and a real
upload and augment run the functions' handlers from the installed copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import imagefiles as f
import pytest

from orchestrator.functions import REPO_ROOT

SOURCES = ("pyproject.toml", "README.md", "requirements", "layers/shared/dlpipe", "orchestrator", "functions")


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    """Without PYTHONPATH, which would put the checkout before the installed copy."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, check=False,
                          env=env, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy
        copy(REPO_ROOT / name, source / name)
    done = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, source)
    assert done.returncode == 0, done.stderr[-3000:]
    return next(out.glob("dlpipe-*.whl"))


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "v"
    assert run(sys.executable, "-m", "venv", root).returncode == 0
    python = root / "bin" / "python"
    done = run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    assert done.returncode == 0, done.stderr[-3000:]
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    (Path(purelib) / "zz_test_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


@pytest.mark.slow
def test_the_wheel_declares_ranges_and_extras_and_carries_the_handlers(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta = Parser().parsestr(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    assert {f"orchestrator/handlers/{fn}/app.py" for fn in ("augment", "train", "predict")} <= names
    assert "dlpipe/wire/train.py" in names and "orchestrator/cli.py" in names
    demo_data = "orchestrator/demo_data/fashion-mnist/"          # the demo's images, and their licence
    assert {demo_data + n for n in ("LICENSE", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")} <= names
    requires = meta.get_all("Requires-Dist")
    base = [r for r in requires if "extra ==" not in r]
    assert {r.split("<")[0].split(">")[0].split("[")[0] for r in base} >= {"pillow", "pydantic", "tqdm", "boto3"}
    assert all(">=" in r and "==" not in r.split(";")[0] for r in requires), requires
    assert set(meta.get_all("Provides-Extra")) == {"train", "dev"}
    assert any(r.startswith("tensorflow-cpu") and 'extra == "train"' in r for r in requires)


@pytest.mark.slow
def test_the_installed_orchestrator_runs_the_functions_from_its_own_copy(venv, tmp_path):
    python, orchestrator = venv / "bin" / "python", venv / "bin" / "orchestrator"
    check = run(python, "-m", "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    where = run(python, "-c", "import dlpipe, orchestrator.functions as f; "
                              "print(dlpipe.__file__); print(f.FUNCTIONS['augment'].handler_path)", cwd=tmp_path)
    package, handler = where.stdout.split()
    assert package.startswith(str(venv)) and handler.startswith(str(venv)) and Path(handler).is_file()
    assert "usage: orchestrator" in run(orchestrator, "--help", cwd=tmp_path).stdout

    photos = tmp_path / "photos"
    for i, cls in enumerate(("cat", "cat", "dog")):
        (photos / cls).mkdir(parents=True, exist_ok=True)
        (photos / cls / f"{i}.jpg").write_bytes(f.jpeg(40, 30, seed=i))
    home = ["--home", tmp_path / "home", "--concurrency", "1"]
    assert run(orchestrator, *home, "upload", photos, "--prefix", "raw", cwd=tmp_path).returncode == 0
    done = run(orchestrator, *home, "augment", "--source", "raw", "--output", "augmented", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["augmented"] == 3 and summary["failed"] == 0 and summary["bill"]["invocations"] == 1
    done = run(orchestrator, *home, "fashion-mnist", "--bundled", "--limit", "5", "--json", cwd=tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["written"] == {"train": 5, "test": 5}, done.stderr
