"""Shared fixtures: a moto server on 127.0.0.1, and paths to ../shared material."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """A real moto server process on 127.0.0.1; yields its endpoint URL.

    Tests point boto3 at it with AWS_ENDPOINT_URL (see `aws_env`), exactly as a user
    would point the CLI at MinIO or LocalStack.
    """
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto server did not start within 30 s")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """Environment for boto3 (in this process and in child processes) to use the moto server."""
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


@pytest.fixture
def shared_models() -> Path:
    """../shared/models, or skip: a user's fresh clone does not have it."""
    path = SHARED / "models"
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the pretrained ONNX test material lives in ../shared beside the repo")
    return path


FAULTS = REPO / "tests" / "faults"


def pytest_collection_modifyitems(config, items):
    """Everything under tests/faults carries the `faults` marker (`pytest -m faults`).

    Here, not in a conftest.py of tests/faults: a second module named `conftest` would shadow
    this one for the tests that import SHARED from it.
    """
    for item in items:
        if Path(str(item.fspath)).is_relative_to(FAULTS):
            item.add_marker(pytest.mark.faults)
