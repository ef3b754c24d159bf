"""The official pretrained ImageNet SqueezeNets, downloaded once into the download cache.

`orchestrator fetch-model` takes SqueezeNet 1.1 or 1.0 and the ImageNet class names from the
ONNX model zoo (github.com/onnx/models, validated/vision/classification; the base URL is
orchestrator.settings.model_zoo_url()). A download is kept only once it passes the importer's
own structure check (dlpipe.publish.onnx_import.analyse) and the class names match the
model's outputs; the import then checks the feature maps and LiteRT against Keras, and
records the file's sha256 in the version's meta.json. No sha256 is pinned here: the zoo's
files could not be downloaded where this was written, and a pin nobody has checked would
refuse the real file or vouch for nothing.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

LABELS_FILE = "synset.txt"                  # the zoo's 1000 ImageNet class names, `wnid name, synonyms` lines
CACHE_FOLDER = "pretrained"                 # below the download cache
TIMEOUT_S = 10.0                            # per connection and read: offline fails fast
MAX_BYTES = 64 * 2 ** 20                    # the files are ~5 MB; a wrong URL must not fill the disk


@dataclass(frozen=True)
class Pretrained:
    name: str            # the model name it is imported as
    path: str            # below the zoo's base URL
    version: str         # SqueezeNet version, as the importer detects it

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


PRETRAINED = {p.name: p for p in (
    Pretrained("squeezenet1.1", "squeezenet/model/squeezenet1.1-7.onnx", "1.1"),    # MXNet Gluon export, opset 7
    Pretrained("squeezenet1.0", "squeezenet/model/squeezenet1.0-12.onnx", "1.0"),   # Caffe2 conversion, opset 12
)}


class FetchFailed(OSError):
    """A download that did not happen, or gave something that is not the model; nothing was cached."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


@dataclass(frozen=True)
class Fetched:
    onnx: Path
    labels: Path
    downloaded: tuple[str, ...]      # the URLs fetched this time (none: both were cached)


def urls(model: Pretrained, base_url: str) -> tuple[str, str]:
    """(the ONNX file's URL, the class names' URL)."""
    return f"{base_url}/{model.path}", f"{base_url}/{LABELS_FILE}"


def cache_paths(model: Pretrained, cache: Path) -> tuple[Path, Path]:
    folder = cache / CACHE_FOLDER
    return folder / model.filename, folder / LABELS_FILE


def download(url: str, target: Path, check, timeout: float = TIMEOUT_S) -> None:
    """Fetch `url` into `target`, kept only if `check(path)` passes (it raises otherwise)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, part = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            _copy(url, out, timeout)
        check(Path(part))
        os.replace(part, target)
    finally:
        if os.path.exists(part):
            os.remove(part)


def _copy(url: str, out, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            size = 0
            while chunk := response.read(1 << 20):
                size += len(chunk)
                if size > MAX_BYTES:
                    raise FetchFailed(f"{url} is larger than {MAX_BYTES >> 20} MB: not the model", url)
                out.write(chunk)
    except FetchFailed:
        raise
    except urllib.error.HTTPError as err:
        raise FetchFailed(f"cannot download {url}: HTTP {err.code} {err.reason}", url) from None
    except (urllib.error.URLError, OSError) as err:  # no network, refused, timed out, unknown host
        raise FetchFailed(f"cannot download {url}: {getattr(err, 'reason', None) or err}", url) from None


def check_model(model: Pretrained, path: Path, url: str) -> int:
    """The file is a SqueezeNet of the expected version (the importer's structure walk); its classes."""
    import onnx

    from dlpipe.publish.onnx_import import OnnxImportError, analyse

    try:
        found = analyse(onnx.load(str(path)))
    except Exception as err:  # a DecodeError for an HTML page, OnnxImportError for another network
        detail = str(err) if isinstance(err, OnnxImportError) else f"not an ONNX model ({type(err).__name__})"
        raise FetchFailed(f"{url} is not a SqueezeNet the importer understands: {detail}", url) from None
    if found.version != model.version:
        raise FetchFailed(f"{url} is a SqueezeNet {found.version}, not {model.version}", url)
    return found.classes


def check_labels(path: Path, classes: int, url: str) -> None:
    from dlpipe.publish.onnx_import import OnnxImportError, read_labels

    try:
        labels = read_labels(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, OnnxImportError) as err:
        raise FetchFailed(f"{url} is not a list of class names: {err}", url) from None
    if len(labels) != classes:
        raise FetchFailed(f"{url} has {len(labels)} class names, the model has {classes} outputs", url)


def fetch(model: Pretrained, base_url: str, cache: Path, timeout: float = TIMEOUT_S) -> Fetched:
    """The model's ONNX file and class names in the cache, downloaded if they are not there yet."""
    onnx_path, labels_path = cache_paths(model, cache)
    onnx_url, labels_url = urls(model, base_url)
    downloaded = []
    if not onnx_path.is_file():
        download(onnx_url, onnx_path, lambda p: check_model(model, p, onnx_url), timeout)
        downloaded.append(onnx_url)
    if not labels_path.is_file():
        classes = check_model(model, onnx_path, str(onnx_path))
        download(labels_url, labels_path, lambda p: check_labels(p, classes, labels_url), timeout)
        downloaded.append(labels_url)
    return Fetched(onnx_path, labels_path, tuple(downloaded))
