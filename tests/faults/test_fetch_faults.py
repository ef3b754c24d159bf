"""fetch-model against a server that trickles, and a download cache that was damaged after the fact."""

from __future__ import annotations

import socket
import threading
import time

import onnx
import pytest

from dlpipe.publish import zoo
from orchestrator.cli import main
from orchestrator.settings import Placement
from tests.unit.test_onnx_import import make_squeezenet_onnx

MODEL = zoo.PRETRAINED["squeezenet1.1"]


@pytest.fixture(autouse=True)
def no_placement_from_the_environment(monkeypatch):
    for variable in Placement.ENV.values():
        monkeypatch.delenv(variable, raising=False)


class TrickleServer:
    """Answers every request with a 1,000-byte body, one byte every `every` seconds."""

    def __init__(self, every: float = 0.2) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.every, self.stop = every, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: application/octet-stream\r\n\r\n")
            for _ in range(1000):
                if self.stop.wait(self.every):
                    return
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_a_trickling_server_is_given_up_on_at_the_overall_deadline(tmp_path):
    server = TrickleServer(every=0.2)          # each read comes well within the 5 s read timeout
    started = time.monotonic()
    try:
        with pytest.raises(zoo.FetchFailed, match="still not complete after"):
            zoo.download(f"{server.url}/x.onnx", tmp_path / "x.onnx", lambda p: None, timeout=5, deadline_s=1.5)
    finally:
        server.close()
    assert time.monotonic() - started < 30       # 1,000 bytes at 5 a second would take 200 s
    assert list(tmp_path.iterdir()) == []        # no partial file left


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """A cache with a (tiny) SqueezeNet 1.1 and its class names, as a download leaves it, and no network."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DLPIPE_CACHE", str(cache))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DLPIPE_MODEL_ZOO_URL", f"http://127.0.0.1:{port}")   # closed: offline
    onnx_path, labels_path = zoo.cache_paths(MODEL, cache)
    onnx_path.parent.mkdir(parents=True)
    onnx.save(make_squeezenet_onnx("1.1", 50, classes=10), onnx_path)
    labels_path.write_text("".join(f"n{i:08d} class {i}\n" for i in range(10)))
    zoo.fetch(MODEL, "http://unused", cache)       # verified and fingerprinted, nothing downloaded
    return cache, onnx_path, labels_path


def test_a_truncated_model_in_the_cache_is_named_with_how_to_clear_it(cached, tmp_path, capsys):
    _, onnx_path, _ = cached
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    code = main(["--home", str(tmp_path / "home"), "fetch-model"])
    err = capsys.readouterr().err
    assert code == 2 and f"the cached file {onnx_path}" in err and f"rm '{onnx_path}'" in err, err
    assert "Traceback" not in err


def test_a_short_class_name_file_is_blamed_on_itself_not_the_model(cached, tmp_path, capsys):
    _, onnx_path, labels_path = cached
    labels_path.write_text("n0 only one\n")
    zoo._fingerprint_path(labels_path).unlink()      # put there by hand, as the offline advice says
    code = main(["--home", str(tmp_path / "home"), "fetch-model"])
    err = capsys.readouterr().err
    assert code == 2 and f"{labels_path} has 1 class names, the model has 10 outputs" in err, err
    assert f"rm '{labels_path}'" in err and f"rm '{onnx_path}'" not in err


def test_a_sound_cache_is_used_offline(cached):
    cache, onnx_path, labels_path = cached
    fetched = zoo.fetch(MODEL, "http://127.0.0.1:9", cache)
    assert (fetched.onnx, fetched.labels, fetched.downloaded) == (onnx_path, labels_path, ())
