"""`orchestrator fetch-model`: the official pretrained ImageNet SqueezeNet, downloaded and imported.

One command on a fresh machine: download the ONNX model zoo's file and class names into
the download cache (once), check them, import them as a servable version (once: a version
of the same file is reused). Offline it stops at once and says how to do it by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

from dlpipe.predict.versions import list_models, read_meta
from dlpipe.publish import zoo
from dlpipe.shared.names import validate_name
from orchestrator.commands import add_command
from orchestrator.commands.import_onnx import import_file, print_import, read_labels_file
from orchestrator.errors import CommandError
from orchestrator.report import print_summary
from orchestrator.session import Session
from orchestrator.settings import DEFAULT_MODEL_ZOO_URL, ENV_CACHE, ENV_MODEL_ZOO, download_cache_dir, model_zoo_url

EXAMPLES = f"""\
examples:
  orchestrator fetch-model                    # SqueezeNet 1.1 as model squeezenet1.1
  orchestrator fetch-model squeezenet1.0 --name sqz10
then:
  orchestrator predict cat.jpg --model squeezenet1.1
  orchestrator demo --photos PHOTOS/          # fine-tune it on your own class folders

Downloads {' or '.join(m.filename for m in zoo.PRETRAINED.values())} and {zoo.LABELS_FILE} from the ONNX model
zoo ({DEFAULT_MODEL_ZOO_URL}; ${ENV_MODEL_ZOO} for a mirror)
into ${ENV_CACHE}/{zoo.CACHE_FOLDER} (default ~/.cache/dlpipe/{zoo.CACHE_FOLDER}); files already there are used
without the network. Offline, the error says where to get them and the `import-onnx` command to run."""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "fetch-model", help="download the pretrained ImageNet SqueezeNet and import it",
        description="Download an official ImageNet SqueezeNet (ONNX model zoo) and the ImageNet class names into "
                    "the download cache, check them with the importer's structure checks, and import them as a "
                    "servable model version (as `import-onnx` does), unless that file is imported already.",
        examples=EXAMPLES, run=run)
    p.add_argument("model", nargs="?", default="squeezenet1.1", choices=sorted(zoo.PRETRAINED),
                   help="which SqueezeNet (default: %(default)s)")
    p.add_argument("--name", metavar="NAME", help="model name in the model store (default: MODEL)")


def imported_version(store, name: str, sha256: str) -> str | None:
    """The newest version of `name` imported from a file with this sha256, if any."""
    for version in reversed(list_models(store).get(name, [])):
        source = read_meta(store, name, version).get("source") or {}
        if source.get("kind") == "onnx" and source.get("sha256") == sha256:
            return version
    return None


def offline_message(model: zoo.Pretrained, err: zoo.FetchFailed, cache: Path, name: str) -> str:
    onnx_url, labels_url = zoo.urls(model, model_zoo_url())
    return (f"{err}. Nothing was imported. On a machine with internet access, download {onnx_url} and "
            f"{labels_url}; then either copy both into {cache / zoo.CACHE_FOLDER}/ and run this command again, "
            f"or import them directly: `orchestrator import-onnx {model.filename} --labels {zoo.LABELS_FILE} "
            f"--name {name}`")


def fetch_and_import(session: Session, model_name: str, name: str | None = None) -> tuple[str, str]:
    """(name, version) of the model in the store, fetched and imported if need be."""
    model = zoo.PRETRAINED[model_name]
    try:
        name = validate_name(name or model.name, "model name")
    except ValueError as err:
        raise CommandError(str(err)) from None
    cache = download_cache_dir()
    start = time.perf_counter()
    try:
        fetched = zoo.fetch(model, model_zoo_url(), cache)
    except zoo.FetchFailed as err:
        raise CommandError(offline_message(model, err, cache, name)) from None
    for url in fetched.downloaded:
        print(f"downloaded {url}")
    sha256 = hashlib.sha256(fetched.onnx.read_bytes()).hexdigest()
    store = session.model_store()
    version = imported_version(store, name, sha256)
    if version is not None:
        traffic = session.meter.take()
        print_summary("fetch-model", [
            ("model", f"{name} {version}: already imported from {fetched.onnx.name}, nothing to do"),
            ("cached files", f"{fetched.onnx}, {fetched.labels}"),
        ], traffic=traffic)
        return name, version
    labels = read_labels_file(fetched.labels)
    exported, found = import_file(session, fetched.onnx, labels, name)
    print_import(session, exported, found, len(labels), start, title="fetch-model")
    return exported.name, exported.version


def run(args: argparse.Namespace, session: Session) -> int:
    fetch_and_import(session, args.model, args.name)
    return 0
