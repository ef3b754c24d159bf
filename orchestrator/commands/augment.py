"""`orchestrator augment`: fan the source images out over the augment function, in batches."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

from pydantic import ValidationError

from dlpipe.augment.naming import output_stem, relative_key
from dlpipe.shared.images import ImageError
from dlpipe.shared.problems import describe_errors
from dlpipe.shared.store import InvalidKey, validate_prefix
from dlpipe.wire import (
    DEFAULT_VARIANTS,
    VARIANTS,
    AugmentRequest,
    AugmentResponse,
    AugmentSpec,
    ErrorResponse,
    check_augment_output,
    parse_reply,
)
from orchestrator.commands import add_command
from orchestrator.errors import CommandError
from orchestrator.report import add_json_argument, human_out, print_failures, print_json, print_summary, progress_bar
from orchestrator.session import Session

EXAMPLES = f"""\
examples:
  orchestrator augment --source raw --output augmented
      raw/cat/x.jpg -> augmented/cat/x__original.jpg, augmented/cat/x__flip.jpg, ...
  orchestrator augment --source raw --output train224 --size 224 --variants flip rotate crop --seed 7
  orchestrator --stack-name dlpipe augment --source raw --output augmented --batch-size 64

variants: {', '.join(VARIANTS)}  (default: {' '.join(DEFAULT_VARIANTS)})
Random variants take their parameters from (seed, image path, variant), so re-running a
job writes byte-identical files. Exit status is 1 if any image failed (each is listed)."""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "augment", help="write augmented variants of every image under a prefix",
        description="List the images under --source, cut them into batches, run the augment "
                    "function on every batch concurrently, and write the variants under --output, "
                    "keeping each image's class folder.",
        examples=EXAMPLES, run=run)
    parser.add_argument("--source", required=True, metavar="P", help="prefix of the source images, e.g. raw")
    parser.add_argument("--output", required=True, metavar="Q",
                        help="prefix to write the variants under: augmented or augmented/NAME (on AWS the augment "
                             "function may write nowhere else)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="images per invocation (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="V",
                        help=f"variants to make, space or comma separated (default: {' '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random variants (default: 0)")
    parser.add_argument("--size", type=int, metavar="PX",
                        help="outputs are PX x PX: the centre square, scaled (default: the source's size)")
    parser.add_argument("--format", choices=("jpeg", "png"), default="jpeg",
                        help="output format (default: %(default)s, quality 90)")
    parser.add_argument("--copies", type=int, default=1, metavar="K",
                        help="outputs per random variant, each differently random (default: 1)")
    add_json_argument(parser)


def _hidden(key: str) -> bool:
    return any(part.startswith(".") for part in key.split("/"))


def plan(keys: list[str], source: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Keys to augment, and keys refused up front because their outputs would collide."""
    todo, refused, owner = [], [], {}
    for key in keys:
        try:
            stem = output_stem(relative_key(key, source))
        except (ImageError, InvalidKey) as err:
            refused.append((key, str(err)))
            continue
        if stem in owner:
            refused.append((key, f"same name as {owner[stem]} apart from the extension, so their outputs "
                                  "would overwrite each other; rename one"))
            continue
        owner[stem] = key
        todo.append(key)
    return todo, refused


def options(args: argparse.Namespace) -> tuple[str, str, AugmentSpec]:
    """(source, output, spec) from the command line; CommandError naming what is wrong."""
    source, output = args.source.rstrip("/"), args.output.rstrip("/")
    variants = [v for item in args.variants for v in item.split(",") if v]
    try:
        validate_prefix(source)
        validate_prefix(output)
        if not output:
            raise ValueError("--output must not be empty")
        check_augment_output(output)
        if output == source or output.startswith(source + "/") or source.startswith(output + "/"):
            raise ValueError(f"--output {output!r} and --source {source!r} overlap; "
                             "choose an output prefix beside the source, e.g. augmented/NAME")
        if args.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        spec = AugmentSpec(variants=variants, seed=args.seed, size=args.size, format=args.format,
                           copies=args.copies)
    except ValidationError as err:
        raise CommandError(describe_errors(err, inputs=False)) from None
    except (ValueError, InvalidKey) as err:
        raise CommandError(str(err)) from None
    return source, output, spec


@dataclass
class Tally:
    """What the function's replies say, image by image."""

    failures: list[tuple[str, str]]
    done: int = 0
    images_out: int = 0
    bytes_out: int = 0
    refused: list[str] = field(default_factory=list)    # the messages of batches the function refused

    def add(self, batch: list[str], inv) -> None:
        if not inv.ok:
            self.failures += [(key, f"invocation failed: {inv.error}") for key in batch]
            return
        try:
            reply = parse_reply(inv.payload, AugmentResponse)
        except ValidationError:
            self.failures += [(key, "invocation failed: no results in the response") for key in batch]
            return
        if isinstance(reply, ErrorResponse):
            self.refused.append(reply.error)
            self.failures += [(key, f"refused by the function ({reply.statusCode}): {reply.error}") for key in batch]
            return
        seen = set()
        for result in reply.results:
            seen.add(result.key)
            self.images_out += len(result.outputs)
            if result.error:
                self.failures.append((result.key, result.error))
            else:
                self.done += 1
        self.failures += [(key, "no result returned for this key") for key in batch if key not in seen]
        self.bytes_out += reply.bytes_out


def run(args: argparse.Namespace, session: Session) -> int:
    source, output, spec = options(args)
    store = session.data_store()
    listed = [k for k in store.list(source + "/" if source else "") if not _hidden(k)]
    if not source:
        listed = [k for k in listed if not k.startswith(output + "/")]
    if not listed:
        raise CommandError(f"no images under {source + '/'!r} in {store.url}; put some there with "
                           f"`orchestrator upload DIR --prefix {source or 'raw'}`")
    keys, refused = plan(listed, source)
    batches = [keys[i:i + args.batch_size] for i in range(0, len(keys), args.batch_size)]
    events = [AugmentRequest(keys=batch, source_prefix=source, output_prefix=output, spec=spec).model_dump(mode="json")
              for batch in batches]

    invoker = session.invoker
    first_record = len(invoker.records)
    tally = Tally(failures=refused)
    start = time.perf_counter()
    with progress_bar(total=len(keys), unit="img", desc="augment") as bar:
        for inv in invoker.map("augment", events):
            tally.add(batches[inv.index], inv)
            bar.update(len(batches[inv.index]))
    wall = time.perf_counter() - start
    if tally.refused and len(tally.refused) == len(batches):
        raise CommandError(f"the augment function refused every batch: {tally.refused[0]} (if the deployed "
                           "function is older or newer than this orchestrator, deploy this version)")

    traffic = session.meter.take()
    print_summary("augment", [
        ("store", store.url),
        ("source", f"{source}/ ({len(listed)} images)"),
        ("output", f"{output}/<class>/<name>__<variant>.{'jpg' if spec.format == 'jpeg' else 'png'}"),
        ("images in", f"{tally.done} augmented, {len(tally.failures)} failed"),
        ("images out", f"{tally.images_out} ({tally.bytes_out / 1e6:,.1f} MB)"),
        ("wall time", f"{wall:.2f} s"),
        ("throughput", f"{len(keys) / wall:,.1f} source images/s" if wall > 0 else "-"),
    ], invocations=invoker.records[first_record:], out=human_out(args), traffic=traffic)
    print_failures(sorted(tally.failures), out=human_out(args))
    if args.json:
        print_json("augment", {
            "store": store.url, "source": source, "output": output, "source_images": len(listed),
            "augmented": tally.done, "failed": len(tally.failures), "images_out": tally.images_out,
            "bytes_out": tally.bytes_out, "wall_seconds": wall}, sorted(tally.failures), invoker.records[first_record:],
            traffic=traffic)
    return 1 if tally.failures else 0
