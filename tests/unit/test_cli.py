"""The CLI's frame: exit codes, one-line errors, `python -m orchestrator`, and its import graph."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.settings import Placement

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "orchestrator"


@pytest.fixture(autouse=True)
def no_placement_from_the_environment(monkeypatch):
    """The developer's own DLPIPE_STACK_NAME & co must not steer these tests."""
    for variable in Placement.ENV.values():
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def empty_folder(tmp_path) -> Path:
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    return folder


@pytest.fixture
def photos(tmp_path) -> Path:
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "photos" / "cat" / "1.jpg").write_bytes(b"uploaded as it is")
    return tmp_path / "photos"


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not looked at: the labels are read first")
    return path


BAD_USAGE = {
    "upload, no such folder": (["upload", "/nonexistent/photos", "--prefix", "raw"], "is not a directory"),
    "upload, bad prefix": (["upload", "{tmp}", "--prefix", "raw/../etc"], "bad --prefix"),
    "upload, nothing to upload": (["upload", "{empty}", "--prefix", "raw"], "no images to upload under"),
    "predictions, negative limit": (["predictions", "--limit", "-1"], "--limit -1: give 0 (all)"),
    "predictions, unknown table URL": (["--table", "postgres://db/p", "predictions"], "sqlite:///PATH or dynamodb"),
    "models, unknown store URL": (["--models", "ftp://host/models", "models"], "model store: unsupported store URL"),
    "upload, unknown store URL": (["--data", "ftp://host/data", "upload", "{tmp}/photos", "--prefix", "raw"],
                                  "data store: unsupported store URL"),
    "import-onnx, no such file": (["import-onnx", "/nonexistent.onnx", "--labels", "x.txt"], "no such file"),
    "import-onnx, no labels file": (["import-onnx", "{onnx}", "--labels", "/nonexistent/labels.txt"],
                                    "cannot read /nonexistent/labels.txt: No such file or directory"),
    "lambda without a stack": (["--invoker", "lambda", "models"], "--invoker lambda needs --stack-name"),
}


@pytest.mark.parametrize("case", BAD_USAGE, ids=list(BAD_USAGE))
def test_bad_usage_exits_2_with_one_error_line_and_no_traceback(case, tmp_path, empty_folder, photos, onnx_file,
                                                                capsys):
    argv, message = BAD_USAGE[case]
    argv = [a.format(tmp=tmp_path, empty=empty_folder, onnx=onnx_file) for a in argv]
    assert main(["--home", str(tmp_path / "home"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


def test_an_invoker_from_the_environment_is_checked_like_the_option(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DLPIPE_INVOKER", "lamda")
    assert main(["--home", str(tmp_path), "models"]) == 2
    assert capsys.readouterr().err == "error: DLPIPE_INVOKER='lamda': the invoker is local or lambda\n"


def run_module(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in Placement.ENV.values()}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "layers" / "shared"), str(REPO)])
    return subprocess.run([sys.executable, "-m", "orchestrator", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_python_dash_m_orchestrator_runs_the_cli(tmp_path):
    helped = run_module("--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: orchestrator ")
    for command in ("upload", "fashion-mnist", "augment", "prepare", "train", "export", "import-onnx", "models",
                    "predict", "predictions", "demo"):
        assert command in helped.stdout
    failed = run_module("--home", str(tmp_path / "h"), "upload", str(tmp_path / "none"), "--prefix", "raw",
                        cwd=tmp_path)
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1, failed.stderr
    listed = run_module("--home", str(tmp_path / "h"), "models", cwd=tmp_path)
    assert listed.returncode == 0 and "no models in" in listed.stdout


def imports_of(path: Path) -> set[str]:
    """orchestrator.* modules that a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from orchestrator.commands import demo` imports a module
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if module_path(submodule) else node.module)
    return {name for name in found if name.split(".")[0] == "orchestrator"}


def module_path(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def package_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = imports_of(path)
    return graph


def test_nothing_in_the_package_imports_the_cli_back():
    importers = sorted(name for name, deps in package_graph().items() if "orchestrator.cli" in deps)
    assert importers == ["orchestrator.__main__"]


def test_the_packages_imports_have_no_cycle():
    graph = package_graph()
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join([*path, name, dep])}"
            if dep not in state:
                visit(dep, [*path, name])
        state[name] = "done"

    assert "orchestrator.commands.demo" in graph["orchestrator.cli"]  # the graph sees explicit imports
    for name in sorted(graph):
        if name not in state:
            visit(name, [])
