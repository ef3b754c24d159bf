"""`orchestrator predict`: classify images with the predict function, print their top-k."""

from __future__ import annotations

import argparse
import base64
import math
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from dlpipe.predict.versions import list_models
from dlpipe.shared.store import StoreError, validate_key
from dlpipe.wire import MAX_IMAGE_B64_CHARS, MAX_TOP_K, ErrorResponse, PredictRequest, PredictResponse, parse_reply
from orchestrator.commands import add_command
from orchestrator.errors import CommandError
from orchestrator.report import JSON_HELP, human_out, print_json, print_summary, progress_bar
from orchestrator.session import Session

STORE_PREFIX = "store:"

EXAMPLES = """\
examples:
  orchestrator predict cat.jpg dog.png                    # local files, the only (or --model) model
  orchestrator predict store:raw/cats/001.jpg             # an image already in the data store
  orchestrator predict *.jpg --model squeezenet1.1 --top-k 3 --show top3.png
  orchestrator predict cat.jpg --model fmnist --version v2 --json
  orchestrator --stack-name dlpipe predict cat.jpg        # the same, on AWS Lambda"""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "predict", help="classify images with a served model: top-k classes with probabilities",
        description="Send each image to the predict function (local files inline as base64, or data-store "
                    "keys), print its top-k classes, and record every prediction in the predictions table.",
        examples=EXAMPLES, run=run)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="a local image file, or a data-store key as store:KEY (a name that is not a local file "
                        "is taken as a key)")
    p.add_argument("--model", metavar="NAME", help="model name (default: the only model in the model store)")
    p.add_argument("--version", metavar="V", help="model version (default: the model's latest)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to return (default: %(default)s)")
    p.add_argument("--json", action="store_true", help=f"{JSON_HELP}; its \"results\" are the function's "
                   "responses, one per image in the order given, instead of tables")
    p.add_argument("--show", metavar="OUT.png",
                   help="also draw each image beside a bar chart of its top-k, one row per image")


@dataclass
class Item:
    """One image on the command line and what became of it."""

    arg: str
    key: str | None = None           # data-store key, or None for a local file
    path: Path | None = None
    response: PredictResponse | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.response is not None


def resolve_model(session: Session, name: str | None) -> str:
    """--model, or the model store's only model; CommandError with the choices otherwise."""
    if name:
        return name
    try:
        models = list_models(session.model_store())
    except StoreError as err:
        raise CommandError(f"cannot list the model store: {err}") from None
    if len(models) == 1:
        return next(iter(models))
    if not models:
        raise CommandError("the model store has no models yet: run `orchestrator export` (a trained run) "
                           "or `orchestrator import-onnx` (pretrained SqueezeNet) first")
    raise CommandError(f"several models are served, choose one with --model: {', '.join(models)}")


def make_item(arg: str) -> Item:
    """Where one command-line image comes from; a problem is recorded as the item's error."""
    item = Item(arg)
    path = Path(arg)
    if not arg.startswith(STORE_PREFIX) and path.is_file():
        item.path = path
        size = path.stat().st_size
        if 4 * math.ceil(size / 3) > MAX_IMAGE_B64_CHARS:
            item.error = (f"{size / 1e6:.1f} MB is too big to send inline (Lambda's request limit is 6 MB after "
                          "base64): upload it with `orchestrator upload` and pass store:KEY")
        return item
    key = arg.removeprefix(STORE_PREFIX)
    try:
        item.key = validate_key(key)
    except ValueError:
        item.error = "no such local file, and not a valid data-store key either"
    return item


def make_event(item: Item, model: str, version: str | None, top_k: int) -> dict | None:
    """The predict event, built from the same model the function parses; None (and item.error) if unreadable."""
    fields = {"model": model, "version": version, "top_k": top_k, "request_id": str(uuid.uuid4())}
    if item.path is None:
        fields["key"] = item.key
    else:
        try:
            fields.update(image_b64=base64.b64encode(item.path.read_bytes()).decode("ascii"), name=item.path.name)
        except OSError as err:
            item.error = f"cannot read: {err}"
            return None
    return PredictRequest(**fields).model_dump(exclude_none=True)


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def format_table(item: Item, out=None) -> None:
    out = out or sys.stdout
    r = item.response
    print(f"\n{item.arg}   {r.model.name} {r.model.version}   {r.latency_ms:.1f} ms", file=out)
    width = max(len(t.label) for t in r.top)
    for rank, t in enumerate(r.top, 1):
        bar = "#" * round(t.probability * 30)
        print(f"  {rank:>2}. {t.label:<{width}}  {t.probability * 100:6.2f}%  {bar}", file=out)


def draw(items: list[Item], data_store, out: str) -> None:
    """One row per image: the picture, and a horizontal bar chart of its top-k (or why it failed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlpipe.shared.images import ImageError, open_image

    fig, axes = plt.subplots(len(items), 2, figsize=(9, 2.6 * len(items)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.6]})
    for item, (ax_img, ax_bar) in zip(items, axes, strict=True):
        ax_img.set_axis_off()
        try:
            data = item.path.read_bytes() if item.path else data_store.get(item.key)
            ax_img.imshow(open_image(data, min_size=256))
        except (OSError, ImageError, StoreError) as err:
            ax_img.text(0.5, 0.5, f"cannot show:\n{err}", ha="center", va="center", wrap=True, fontsize=8)
        ax_img.set_title(Path(item.arg).name if item.path else item.arg, fontsize=9)
        if not item.ok:
            ax_bar.set_axis_off()
            ax_bar.text(0, 0.5, f"FAILED: {item.error}", va="center", wrap=True, fontsize=9, color="firebrick")
            continue
        top = item.response.top
        ax_bar.barh(range(len(top)), [t.probability for t in top], color="steelblue")
        ax_bar.set_yticks(range(len(top)), [t.label for t in top], fontsize=9)
        ax_bar.invert_yaxis()
        ax_bar.set_xlim(0, 1)
        ax_bar.set_xlabel("probability", fontsize=8)
        for rank, t in enumerate(top):
            p = t.probability
            inside = p > 0.8  # label inside the bar when it would run off the axes
            ax_bar.text(p - 0.01 if inside else p + 0.01, rank, f"{p:.3f}", va="center", fontsize=8,
                        ha="right" if inside else "left", color="white" if inside else "black")
        model = item.response.model
        ax_bar.set_title(f"{model.name} {model.version}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def read_response(item: Item, inv) -> None:
    """Record one invocation's outcome on its item: the response, or the function's own message."""
    if not inv.ok:
        item.error = inv.error
        return
    try:
        reply = parse_reply(inv.payload, PredictResponse)
    except ValidationError:
        item.error = f"unexpected response {inv.payload!r}"
        return
    if isinstance(reply, ErrorResponse):
        # The function names the image in its messages; here the image is named already.
        item.error = reply.error.removeprefix(f"{item.path.name if item.path else item.key}: ")
    else:
        item.response = reply


def predict_all(session: Session, todo: list[Item], model: str, version: str | None, top_k: int) -> None:
    """Invoke the function for every item, a chunk at a time, so only a few base64 images are held in memory."""
    chunk_size = max(32, 4 * (session.concurrency or 8))
    with progress_bar(total=len(todo), desc="predict", unit="img", enabled=len(todo) > 1) as bar:
        for chunk in chunks(todo, chunk_size):
            sent = [(item, make_event(item, model, version, top_k)) for item in chunk]
            sent = [(item, event) for item, event in sent if event is not None]
            for inv in session.invoker.map("predict", [event for _, event in sent]):
                read_response(sent[inv.index][0], inv)
                bar.update()


def summary_rows(items: list[Item], model: str, wall: float, show: str | None) -> list[tuple[str, object]]:
    done = [item for item in items if item.ok]
    latencies = sorted(item.response.latency_ms for item in done)
    served = f"{model} {done[0].response.model.version}" if done else model
    rows: list[tuple[str, object]] = [
        ("model", served), ("images", f"{len(items)} ({len(done)} predicted, {len(items) - len(done)} failed)")]
    rows += [("failed", f"{item.arg}: {item.error}") for item in items if not item.ok][:20]
    rows.append(("wall time", f"{wall:.2f} s"))
    if done:
        rows.append(("throughput", f"{len(done) / wall:.1f} images/s"))
        rows.append(("latency in function", f"median {statistics.median(latencies):.1f} ms, "
                                            f"max {latencies[-1]:.1f} ms"))
    if show:
        rows.append(("figure", show))
    return rows


def json_figures(items: list[Item], model: str, wall: float, show: str | None) -> dict:
    """The summary's figures for --json, and every image's response (or its error) as "results"."""
    done = [item for item in items if item.ok]
    latencies = sorted(item.response.latency_ms for item in done)
    return {"model": model, "version": done[0].response.model.version if done else None, "images": len(items),
            "predicted": len(done), "failed": len(items) - len(done), "wall_seconds": wall,
            "latency_ms": {"median": statistics.median(latencies), "max": latencies[-1]} if done else None,
            "figure": show,
            "results": [{**(item.response.model_dump() if item.response else {"error": item.error}),
                         "image": item.arg} for item in items]}


def run(args: argparse.Namespace, session: Session) -> int:
    if not 1 <= args.top_k <= MAX_TOP_K:
        raise CommandError(f"--top-k must be between 1 and {MAX_TOP_K}")
    model = resolve_model(session, args.model)
    items = [make_item(arg) for arg in args.images]

    start = time.perf_counter()
    invoker = session.invoker
    first_record = len(invoker.records)
    predict_all(session, [item for item in items if item.error is None], model, args.version, args.top_k)
    wall = time.perf_counter() - start

    if not args.json:
        for item in items:
            if item.ok:
                format_table(item)
            else:
                print(f"\n{item.arg}   FAILED: {item.error}")
    if args.show:
        draw(items, session.data_store(), args.show)
    traffic = session.meter.take()
    print_summary("predict", summary_rows(items, model, wall, args.show), invoker.records[first_record:],
                  out=human_out(args), traffic=traffic)
    if args.json:
        failures = [(item.arg, item.error or "no response") for item in items if not item.ok]
        print_json("predict", json_figures(items, model, wall, args.show), failures, invoker.records[first_record:],
                   traffic=traffic)
    return 0 if all(item.ok for item in items) else 1
