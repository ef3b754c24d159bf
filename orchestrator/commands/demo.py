"""`orchestrator demo`: the whole pipeline as a user would run it, on Fashion-MNIST or on your photos.

Each step is the real sub-command (orchestrator.chain): if the demo works, the commands it
chains work. With --photos it fine-tunes the pretrained ImageNet SqueezeNet on a folder of
class sub-folders instead (orchestrator.commands.photo_demo).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from orchestrator import chain
from orchestrator.commands import add_command, augment, export, fashion_mnist, photo_demo, predict, prepare, train
from orchestrator.errors import CommandError
from orchestrator.report import add_json_argument, human_out
from orchestrator.session import Session

STEP_COMMANDS = (fashion_mnist, augment, prepare, train, export, predict)
FASHION_DEFAULTS = {"images": 6000, "rounds": 5, "local_epochs": 2, "run_name": "demo"}

EXAMPLES = """\
examples:
  orchestrator demo                          # 3-4 minutes on 2 cores, ~83% validation accuracy
  orchestrator demo --images 12000 --rounds 5 --workers 4
  orchestrator --stack-name dlpipe demo      # the same on AWS Lambda
  orchestrator demo --photos flowers/ --pretrained squeezenet1.1.onnx --labels synset.txt
      fine-tune the pretrained ImageNet SqueezeNet on flowers/<class>/*.jpg (or flowers/train and
      flowers/test): upload, augment, prepare, train --init-from, export, predict
  orchestrator fetch-model && orchestrator demo --photos flowers/
      the same with the ONNX model zoo's SqueezeNet 1.1, downloaded once"""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "demo",
        help="run the whole pipeline on Fashion-MNIST, or fine-tune on your photos (--photos)",
        description="Write Fashion-MNIST into the data store as images in class folders, augment the training "
                    "images (original + mirror image), pack them into shards, train SqueezeNet 1.1 data-parallel "
                    "for a few rounds, export the result for LiteRT serving and predict on held-out test images. "
                    "With --photos: your class folders instead, fine-tuning a pretrained ImageNet SqueezeNet.",
        examples=EXAMPLES, run=run)
    p.add_argument("--images", type=int, metavar="N",
                   help=f"training images to use (and as many held-out test images; default: "
                        f"{FASHION_DEFAULTS['images']}; not with --photos)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="training workers (default: %(default)s)")
    p.add_argument("--rounds", type=int, metavar="R",
                   help=f"training rounds (default: {FASHION_DEFAULTS['rounds']}, with --photos "
                        f"{photo_demo.DEFAULTS['rounds']})")
    p.add_argument("--local-epochs", type=int, metavar="E",
                   help=f"epochs each worker trains per round (default: {FASHION_DEFAULTS['local_epochs']}, with "
                        "--photos train's fine-tuning default)")
    p.add_argument("--run-name", metavar="RUN",
                   help=f"training run and model name (default: {FASHION_DEFAULTS['run_name']}, with --photos "
                        f"{photo_demo.DEFAULTS['run_name']}); an existing run is resumed")
    g = p.add_argument_group("fine-tuning on your photos")
    g.add_argument("--photos", metavar="DIR",
                   help="your photos as DIR/<class>/*.jpg (a share of each class held out for validation and the "
                        "predictions), or DIR/train/<class>/ and DIR/test/<class>/")
    g.add_argument("--pretrained", metavar="FILE.onnx",
                   help="the ImageNet SqueezeNet 1.1 or 1.0 to start from (default: the ONNX model zoo's 1.1, "
                        "as `orchestrator fetch-model` gets it, from its cache)")
    g.add_argument("--labels", metavar="FILE",
                   help="the pretrained model's class names (default: placeholders; fine-tuning replaces them)")
    g.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                   help="share of each class's photos held out when DIR has no train/test (default: %(default)s)")
    add_json_argument(p)


def run(args: argparse.Namespace, session: Session) -> int:
    # Under --json the steps' own reports go to stderr with the rest of the human report.
    args.json_out = sys.stdout if args.json else None
    with contextlib.redirect_stdout(human_out(args)):
        return _run(args, session)


def _run(args: argparse.Namespace, session: Session) -> int:
    if args.photos:
        if args.images is not None:
            raise CommandError("--images is for the Fashion-MNIST demo; with --photos every photo is used")
        return photo_demo.run(args, session)
    given = [flag for flag, value in (("--pretrained", args.pretrained), ("--labels", args.labels)) if value]
    if given:
        raise CommandError(f"{', '.join(given)} only go with --photos DIR")
    for key, value in FASHION_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return run_fashion_mnist(args, session)


def run_fashion_mnist(args: argparse.Namespace, session: Session) -> int:
    parser = chain.step_parser(STEP_COMMANDS)
    start, traffic_at_start = time.perf_counter(), session.meter.snapshot()   # the bill covers every step
    name = args.run_name
    out_dir = chain.output_dir(session)
    figure = out_dir / "predictions.png"
    chain.run_step(parser, session, "1/6 load Fashion-MNIST as images in class folders",
                   ["fashion-mnist", "--prefix", "fashion-mnist", "--limit", str(args.images)])
    # The augment function may write only under augmented/ (template.yaml's policy).
    chain.run_step(parser, session, "2/6 augment the training images",
                   ["augment", "--source", "fashion-mnist/train", "--output", "augmented/fashion-mnist-train",
                    "--variants", "original", "flip", "--format", "png", "--batch-size", "250"])
    chain.run_step(parser, session, "3/6 pack shards for the training workers",
                   ["prepare", "--source", "augmented/fashion-mnist-train", "--val-source", "fashion-mnist/test",
                    "--dataset", name, "--workers", str(args.workers), "--recipe", "fashion-mnist"])
    chain.run_step(parser, session, "4/6 train data-parallel",
                   ["train", "--dataset", name, "--run", name, "--workers", str(args.workers), "--rounds",
                    str(args.rounds), "--local-epochs", str(args.local_epochs), "--resume", "--output", str(out_dir)])
    chain.run_step(parser, session, "5/6 export for LiteRT serving", ["export", "--run", name, "--name", name])
    sample = chain.held_out_sample(session.data_store(), "fashion-mnist/test")
    chain.run_step(parser, session, "6/6 predict on held-out test images",
                   ["predict", *[f"store:{key}" for key in sample], "--model", name, "--top-k", "3",
                    "--show", str(figure)])
    chain.print_demo_summary(session, "demo", name, out_dir, figure, args.workers, start, json_out=args.json_out,
                             traffic_at_start=traffic_at_start)
    print("\nnext: orchestrator predict YOUR_IMAGE.png --model " + name, file=sys.stdout)
    return 0
