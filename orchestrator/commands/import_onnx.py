"""`orchestrator import-onnx`: a pretrained ImageNet SqueezeNet (ONNX) as a servable model version."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from dlpipe.shared.recipe import Recipe
from orchestrator.commands import add_command, require_train_extra
from orchestrator.errors import CommandError
from orchestrator.quiet import native_output_captured
from orchestrator.report import add_json_argument, print_json, print_summary
from orchestrator.session import Session

EXAMPLES = """\
examples:
  orchestrator import-onnx squeezenet1.1.onnx --labels imagenet_synset_words.txt
  orchestrator import-onnx squeezenet1.0.onnx --labels synset_words.txt --name sqz10 --version v1
  orchestrator predict cat.jpg --model squeezenet1.1
  orchestrator fetch-model squeezenet1.1     # download the ONNX model zoo's file and import it"""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "import-onnx", help="import a pretrained SqueezeNet 1.0/1.1 ONNX file as a servable model",
        description="Map an ONNX SqueezeNet 1.0 or 1.1 onto the pipeline's Keras SqueezeNet by graph structure, "
                    "convert it to LiteRT and write it to the model store with its labels and preprocessing "
                    "recipe. The version (1.0/1.1) is detected from the graph.",
        examples=EXAMPLES, run=run)
    p.add_argument("file", metavar="FILE.onnx", help="the ONNX model")
    p.add_argument("--labels", required=True, metavar="FILE",
                   help="class names in output order: `wnid name, synonyms` lines (imagenet_synset_words.txt; "
                        "the first name is used) or one name a line")
    p.add_argument("--name", metavar="NAME", help="model name (default: the file name without .onnx)")
    p.add_argument("--version", metavar="V", help="version label (default: the next vN)")
    p.add_argument("--recipe", metavar="RECIPE.json",
                   help="preprocessing recipe (dlpipe.shared.recipe.Recipe fields) if the weights were not trained "
                        "with the reference release's (1.1: RGB, shorter side 256, center crop 224, ImageNet "
                        "mean/std; 1.0: BGR, 227 stretch, 0..255 minus 104/117/123)")
    add_json_argument(p)


def read_labels_file(path: str | Path) -> list[str]:
    from dlpipe.publish.onnx_import import OnnxImportError, read_labels

    try:
        return read_labels(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise CommandError(f"cannot read {err.filename}: {err.strerror}") from None
    except (ValueError, OnnxImportError) as err:
        raise CommandError(f"bad labels file {path}: {err}") from None


def import_file(session: Session, path: Path, labels: list[str], name: str, version: str | None = None,
                recipe: Recipe | None = None):
    """Import `path` as version `version` of `name`: (ExportedVersion, what was found). CommandError otherwise."""
    from dlpipe.publish.export import ExportError
    from dlpipe.publish.onnx_import import OnnxImportError, import_onnx

    print(f"importing {path} (loads TensorFlow; takes a few seconds)...", file=sys.stderr, flush=True)
    try:
        with native_output_captured(session.verbose):
            return import_onnx(path, labels, session.model_store(), name, version, recipe)
    except (OnnxImportError, ExportError) as err:
        raise CommandError(f"{path}: {err}") from None


def print_import(session: Session, exported, found, classes: int, start: float, title: str = "import-onnx",
                 as_json: bool = False) -> None:
    """The summary, on stdout, or on stderr with one JSON document on stdout (--json)."""
    out = sys.stderr if as_json else sys.stdout
    traffic = session.meter.take()
    print_summary(title, [
        ("model", f"{exported.name} {exported.version} (now latest)"),
        ("written to", f"{session.model_store().url}/{exported.prefix}"),
        ("architecture", f"SqueezeNet {found.version}, input {'x'.join(map(str, found.input_shape))}"
                         + (", explicit Pad before conv10" if found.final_pad else "")),
        ("classes", classes),
        ("model.tflite", f"{exported.tflite_bytes / 1e6:.1f} MB"),
        ("LiteRT vs Keras", f"max |diff| {exported.max_abs_diff:.2g} on a random input"),
        ("wall time", f"{time.perf_counter() - start:.1f} s"),
    ], out=out, traffic=traffic)
    if as_json:
        print_json(title, {
            "model": exported.name, "version": exported.version,
            "written_to": f"{session.model_store().url}/{exported.prefix}", "squeezenet": found.version,
            "input_shape": list(found.input_shape), "final_pad": found.final_pad, "classes": classes,
            "tflite_bytes": exported.tflite_bytes, "max_abs_diff": exported.max_abs_diff,
            "wall_seconds": time.perf_counter() - start}, traffic=traffic)
    print(f"\ntry it: orchestrator predict IMAGE --model {exported.name}", file=out)


def run(args: argparse.Namespace, session: Session) -> int:
    require_train_extra("import-onnx")
    path = Path(args.file)
    if not path.is_file():
        raise CommandError(f"no such file: {path}")
    labels = read_labels_file(args.labels)
    try:
        recipe = Recipe.from_dict(json.loads(Path(args.recipe).read_text())) if args.recipe else None
    except OSError as err:
        raise CommandError(f"cannot read {err.filename}: {err.strerror}") from None
    except (ValueError, TypeError) as err:
        raise CommandError(f"bad recipe file {args.recipe}: {err}") from None
    name = args.name or re.sub(r"[^A-Za-z0-9._-]", "-", path.name.removesuffix(".onnx"))
    start = time.perf_counter()
    exported, found = import_file(session, path, labels, name, args.version, recipe)
    print_import(session, exported, found, len(labels), start, as_json=args.json)
    return 0
