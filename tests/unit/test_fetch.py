"""`orchestrator fetch-model`: download, check, cache and import the pretrained SqueezeNet, from a local server.

No test reaches the internet: a ThreadingHTTPServer on 127.0.0.1 serves the zoo's layout
(squeezenet/model/<file>.onnx, synset.txt) from files made here or from ../shared/models, and
DLPIPE_MODEL_ZOO_URL points the command at it; the offline case points it at a closed port.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from test_onnx_import import make_squeezenet_onnx, onnxruntime_probs

from dlpipe.predict.classifier import Classifier
from dlpipe.predict.versions import list_models, load_version
from dlpipe.publish.onnx_import import OnnxImportError, import_onnx, load
from dlpipe.publish.zoo import PRETRAINED
from dlpipe.shared.store import DirStore
from orchestrator.cli import main

ZOO_11 = PRETRAINED["squeezenet1.1"].path


class ZooServer:
    """The zoo's file layout over HTTP on 127.0.0.1, counting the requests it answers."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def zoo_folder(root: Path, onnx_file: Path, labels: Path) -> Path:
    """The zoo's paths as links to files here (the server follows them)."""
    (root / ZOO_11).parent.mkdir(parents=True)
    (root / ZOO_11).symlink_to(onnx_file)
    (root / "synset.txt").symlink_to(labels)
    return root


@pytest.fixture
def where(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DLPIPE_CACHE", str(cache))
    return ["--home", str(tmp_path / "home"), "--concurrency", "1"], cache, DirStore(tmp_path / "home" / "models")


def serve(tmp_path, monkeypatch, onnx_file: Path, labels: Path):
    server = ZooServer(zoo_folder(tmp_path / "zoo", onnx_file, labels))
    monkeypatch.setenv("DLPIPE_MODEL_ZOO_URL", server.url)
    return server


def test_fetch_downloads_checks_caches_and_imports_once(shared_models, tmp_path, monkeypatch, where, capsys):
    argv, cache, models = where
    server = serve(tmp_path, monkeypatch, shared_models / "squeezenet1.1.onnx",
                   shared_models / "imagenet_synset_words.txt")
    try:
        assert main([*argv, "fetch-model"]) == 0
        out = capsys.readouterr().out
        assert f"downloaded {server.url}/{ZOO_11}" in out and f"downloaded {server.url}/synset.txt" in out
        assert "squeezenet1.1 v1 (now latest)" in out and "SqueezeNet 1.1, input 224x224x3" in out
        cached = cache / "pretrained" / "squeezenet1.1-7.onnx"
        assert cached.read_bytes() == (shared_models / "squeezenet1.1.onnx").read_bytes()
        meta = json.loads(models.get("models/squeezenet1.1/v1/meta.json"))
        assert meta["source"]["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
        assert meta["source"]["file"] == "squeezenet1.1-7.onnx" and meta["classes"] == 1000
        version = load_version(models, "squeezenet1.1")
        assert version.labels[285] == "Egyptian cat"
        assert models.exists("models/squeezenet1.1/v1/weights.npz")   # it can seed `train --init-from`

        asked = len(server.requests)
        assert main([*argv, "fetch-model"]) == 0                       # cached and imported: nothing to do
        assert "squeezenet1.1 v1: already imported from squeezenet1.1-7.onnx" in capsys.readouterr().out
        assert len(server.requests) == asked == 2
        assert list_models(models) == {"squeezenet1.1": ["v1"]}
    finally:
        server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]      # closed again when the socket is: nothing answers there


def test_offline_it_fails_at_once_saying_where_to_get_the_files(tmp_path, monkeypatch, where, capsys):
    argv, cache, models = where
    base = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("DLPIPE_MODEL_ZOO_URL", base)
    assert main([*argv, "fetch-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot download {base}/{ZOO_11}: ") and err.count("\n") == 1, err
    assert f"download {base}/{ZOO_11} and {base}/synset.txt" in err
    assert f"copy both into {cache / 'pretrained'}/" in err
    assert "`orchestrator import-onnx squeezenet1.1-7.onnx --labels synset.txt --name squeezenet1.1`" in err
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    assert list_models(models) == {}


def test_a_download_that_is_not_the_model_is_not_kept(tmp_path, monkeypatch, where, capsys):
    argv, cache, _ = where
    page = tmp_path / "page.html"
    page.write_text("<html>rate limited</html>")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    server = serve(tmp_path, monkeypatch, page, labels)
    try:
        assert main([*argv, "fetch-model"]) == 2
    finally:
        server.close()
    err = capsys.readouterr().err
    assert f"{server.url}/{ZOO_11} is not a SqueezeNet the importer understands: not an ONNX model" in err
    assert [p for p in cache.rglob("*") if p.is_file()] == []      # neither the file nor a .part is left


def test_class_names_that_do_not_fit_the_model_are_not_kept(tmp_path, monkeypatch, where, capsys):
    argv, cache, models = where
    net = tmp_path / "net.onnx"
    onnx.save(make_squeezenet_onnx("1.1", 50, classes=10), net)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    server = serve(tmp_path, monkeypatch, net, labels)
    try:
        assert main([*argv, "fetch-model"]) == 2
        assert f"{server.url}/synset.txt has 3 class names, the model has 10 outputs" in capsys.readouterr().err
        assert (cache / "pretrained" / "squeezenet1.1-7.onnx").is_file()     # the model passed its check
        assert not (cache / "pretrained" / "synset.txt").exists()
        labels.write_text("".join(f"class {i}\n" for i in range(10)))    # fixed upstream: only the names come
        assert main([*argv, "fetch-model"]) == 0
        assert server.requests.count(f"/{ZOO_11}") == 1
        assert load_version(models, "squeezenet1.1").labels[3] == "class 3"
    finally:
        server.close()


def test_a_squeezenet_of_the_other_version_is_refused(tmp_path, monkeypatch, where, capsys):
    argv, _, _ = where
    net = tmp_path / "net.onnx"
    onnx.save(make_squeezenet_onnx("1.0", 53), net)
    server = serve(tmp_path, monkeypatch, net, net)
    try:
        assert main([*argv, "fetch-model"]) == 2
    finally:
        server.close()
    assert "is a SqueezeNet 1.0, not 1.1" in capsys.readouterr().err


# --- the zoo's SqueezeNet 1.1 ends in AveragePool(13x13) rather than GlobalAveragePool ---------------

def with_average_pool(model: onnx.ModelProto, kernel: int) -> onnx.ModelProto:
    """The graph with its GlobalAveragePool replaced by an unpadded AveragePool of `kernel`."""
    nodes = [helper.make_node("AveragePool", list(n.input), list(n.output), kernel_shape=[kernel] * 2,
                              strides=[kernel] * 2) if n.op_type == "GlobalAveragePool" else n
             for n in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def test_an_average_pool_over_the_whole_map_is_the_global_pool(tmp_path):
    model = with_average_pool(make_squeezenet_onnx("1.1", 50, dropout=True), 3)   # 50 px: conv10's map is 3x3
    path = tmp_path / "zoo-like.onnx"
    onnx.save(model, path)
    store = DirStore(tmp_path / "models")
    _, found = import_onnx(path, [f"c{i}" for i in range(10)], store, "net")
    assert found.pool_kernel == (3, 3)
    classifier = Classifier(load_version(store, "net"))
    x = np.random.default_rng(1).normal(0, 1, (50, 50, 3)).astype(np.float32)
    expected = onnxruntime_probs(model, x)
    assert expected.max() - expected.min() > 1e-3
    np.testing.assert_allclose(classifier.probabilities(x), expected, atol=1e-4)


def test_an_average_pool_smaller_than_the_map_is_refused(tmp_path):
    path = tmp_path / "local-pool.onnx"
    onnx.save(with_average_pool(make_squeezenet_onnx("1.1", 50), 2), path)
    with pytest.raises(OnnxImportError, match=r"average pool after conv10 is \(2, 2\), but conv10's map is \(3, 3\)"):
        load(path)
