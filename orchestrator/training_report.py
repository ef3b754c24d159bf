"""What a training run shows the user: a line per round, metrics.json and the plot of loss and accuracy."""

from __future__ import annotations

import io
import json
from pathlib import Path

from orchestrator.report import megabytes


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def round_line(record: dict) -> str:
    """One line per round; what older records lack (epochs, Lambda time, transfers) is left out."""
    train, val = record.get("train") or {}, record.get("val") or {}
    transfer = record.get("transfer")
    through = f"  {megabytes(transfer['bytes_down'] + transfer['bytes_up'])} via orchestrator" if transfer else ""
    epochs = f"  epoch {record['epochs']:.2f}" if record.get("epochs") is not None else ""
    subset = "*" if val.get("subset") else ""
    on_lambda = f"  Lambda {record['lambda_seconds']:.1f} s" if record.get("lambda_seconds") is not None else ""
    return (f"round {record['round']:>3}  workers {record['workers_ok']}/{record['workers']}{epochs}  "
            f"train loss {_fmt(train.get('loss'))} acc {_fmt(train.get('accuracy'), '.3f')}  "
            f"val{subset} loss {_fmt(val.get('loss'))} acc {_fmt(val.get('accuracy'), '.3f')}  "
            f"{record['wall_seconds']:.1f} s here{on_lambda}  {record['gb_seconds']:.1f} GB-s{through}")


def metrics_from_records(run: str, dataset: str, training: dict, records: list[dict]) -> dict:
    rounds = [r for r in records if r["round"] > 0]
    return {"run": run, "dataset": dataset, "training": training,
            "rounds": [{"round": r["round"], "epochs": r.get("epochs"), "workers_ok": r["workers_ok"],
                        "train": r["train"], "val": r["val"], "wall_seconds": r["wall_seconds"],
                        "lambda_seconds": r.get("lambda_seconds"), "gb_seconds": r["gb_seconds"],
                        "train_share": r.get("train_share"), "lambda_train_share": r.get("lambda_train_share")}
                       for r in rounds]}


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


def write_outputs(run, records: list[dict], output_dir: Path | None) -> dict[str, str]:
    """metrics.json and metrics.png into the run (and under `output_dir` as <run>-metrics.*); their locations."""
    config = run.config()
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
