"""What a training run shows the user: a line per round, metrics.json and the plot of loss and accuracy."""

from __future__ import annotations

import io
import json
from pathlib import Path

from dlpipe.runs.record import RoundRecord, TrainScore, ValScore
from dlpipe.runs.run import TrainingRun
from orchestrator.report import megabytes


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def round_line(record: RoundRecord) -> str:
    """One line per round; what older records lack (epochs, Lambda time, transfers) is left out.

    val*: scored on the fixed validation subset (train --eval-images), not the whole set.
    """
    train, val, transfer = record.train, record.val, record.transfer  # transfer: none in rounds recorded before it
    train_loss, train_acc = (train.loss, train.accuracy) if train else (None, None)
    val_loss, val_acc = (val.loss, val.accuracy) if val else (None, None)
    through = f"  {megabytes(transfer.bytes_down + transfer.bytes_up)} via orchestrator" if transfer else ""
    epochs = f"  epoch {record.epochs:.2f}" if record.epochs is not None else ""
    subset = "*" if val and val.subset else ""
    on_lambda = f"  Lambda {record.lambda_seconds:.1f} s" if record.lambda_seconds is not None else ""
    return (f"round {record.round:>3}  workers {record.workers_ok}/{record.workers}{epochs}  "
            f"train loss {_fmt(train_loss)} acc {_fmt(train_acc, '.3f')}  "
            f"val{subset} loss {_fmt(val_loss)} acc {_fmt(val_acc, '.3f')}  "
            f"{record.wall_seconds:.1f} s here{on_lambda}  {record.gb_seconds:.1f} GB-s{through}")


def _score(score: TrainScore | ValScore | None) -> dict | None:
    return score.model_dump(mode="json", exclude_unset=True) if score is not None else None


def metrics_from_records(run: str, dataset: str, training: dict, records: list[RoundRecord]) -> dict:
    rounds = [r for r in records if r.round > 0]
    return {"run": run, "dataset": dataset, "training": training,
            "rounds": [{"round": r.round, "epochs": r.epochs, "workers_ok": r.workers_ok, "train": _score(r.train),
                        "val": _score(r.val), "wall_seconds": r.wall_seconds, "lambda_seconds": r.lambda_seconds,
                        "gb_seconds": r.gb_seconds, "train_share": r.train_share,
                        "lambda_train_share": r.lambda_train_share} for r in rounds]}


def plot_metrics(metrics: dict) -> bytes:
    """PNG of loss and accuracy per round (train and validation)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rounds = metrics["rounds"]
    xs = [r["round"] for r in rounds]
    figure = Figure(figsize=(9, 3.6), dpi=100)
    for position, name in enumerate(("loss", "accuracy"), start=1):
        axes = figure.add_subplot(1, 2, position)
        for split, style in (("train", "o-"), ("val", "s-")):
            ys = [(r[split] or {}).get(name) for r in rounds]
            points = [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None]
            if points:
                label = "validation" if split == "val" else "train (workers)"
                axes.plot(*zip(*points, strict=True), style, label=label)
        axes.set_xlabel("round")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"run {metrics['run']} on {metrics['dataset']}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_outputs(run: TrainingRun, records: list[RoundRecord], output_dir: Path | None) -> dict[str, str]:
    """metrics.json and metrics.png into the run (and under `output_dir` as <run>-metrics.*); their locations."""
    config = run.config()
    assert config is not None, "a run with records has a config"
    metrics = metrics_from_records(run.name, config.dataset, config.training.model_dump(), records)
    metrics_bytes = json.dumps(metrics, indent=1).encode()
    png = plot_metrics(metrics)
    outputs = run.put_outputs(metrics_bytes, png)
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / f"{run.name}-metrics.json").write_bytes(metrics_bytes)
        (output_dir / f"{run.name}-metrics.png").write_bytes(png)
        outputs["local metrics"] = str(output_dir / f"{run.name}-metrics.json")
        outputs["local plot"] = str(output_dir / f"{run.name}-metrics.png")
    return outputs
