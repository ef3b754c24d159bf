"""`--json`: one JSON document on stdout and nothing else; the human report on stderr.

The document holds the summary's figures, every failure with its reason and the bill. Output is
captured at the file-descriptor level (capfd), so that a stray print from a worker process or a
C library would break `json.loads` here as it would break a script's `| jq`. Exit codes are the
same as without --json.
"""

from __future__ import annotations

import json
from pathlib import Path

import imagefiles as f
import pytest

from dlpipe.shared.store import DirStore
from orchestrator.cli import main

SHARED_MODELS = Path(__file__).resolve().parents[3] / "shared" / "models"


def run_json(capfd, *argv: str) -> tuple[int, dict, str]:
    """Exit status, the one document on stdout, and stderr."""
    status = main([*map(str, argv), "--json"])
    captured = capfd.readouterr()
    try:
        document = json.loads(captured.out)
    except json.JSONDecodeError as err:
        raise AssertionError(f"stdout is not one JSON document ({err}):\n{captured.out[:2000]}") from None
    return status, document, captured.err


def assert_contract(document: dict, command: str) -> None:
    assert document["command"] == command
    assert all(set(failure) == {"item", "reason"} and failure["reason"] for failure in document["failures"])
    assert set(document["bill"]) == {"invocations", "failed_invocations", "billed_ms", "gb_seconds", "dollars",
                                     "s3_requests", "s3_dollars", "bytes_down", "bytes_up", "transfer_dollars",
                                     "total_dollars"}


@pytest.fixture
def where(tmp_path) -> list[str]:
    return ["--home", str(tmp_path / "home"), "--concurrency", "2"]


def test_upload_and_augment_report_figures_failures_and_the_bill(where, tmp_path, capfd):
    photos = tmp_path / "photos"
    for name, data in {"cat/c0.jpg": f.jpeg(40, 30, seed=0), "cat/c1.jpg": f.jpeg(40, 30, seed=1),
                       "dog/d0.png": f.encode(f.photo(30, 40, seed=2), "PNG"), "odd/text.jpg": f.text_as_jpg()}.items():
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(data)
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(f.jpeg(20, 20))
    (photos / "dog" / "link.jpg").symlink_to(outside)

    status, upload, err = run_json(capfd, *where, "upload", photos, "--prefix", "raw")
    assert status == 1                                          # a link leading out is refused, as without --json
    assert_contract(upload, "upload")
    assert upload["uploaded"] == upload["files"] == 4 and upload["classes"] == {"cat": 2, "dog": 1, "odd": 1}
    assert upload["refused"] == 1 and upload["failed"] == 0
    assert [x["item"] for x in upload["failures"]] == ["dog/link.jpg"] and "outside" in upload["failures"][0]["reason"]
    assert upload["bill"]["invocations"] == 0 and upload["bill"]["dollars"] == 0
    assert "files uploaded" in err and "refused (1):" in err     # the human report, on stderr

    status, augment, err = run_json(capfd, *where, "augment", "--source", "raw", "--output", "augmented",
                                    "--variants", "original", "flip", "--batch-size", "2")
    assert status == 1
    assert_contract(augment, "augment")
    assert (augment["source_images"], augment["augmented"], augment["failed"], augment["images_out"]) == (4, 3, 1, 6)
    assert augment["failures"][0]["item"] == "raw/odd/text.jpg"
    assert "not a recognised image" in augment["failures"][0]["reason"]
    assert len(list(DirStore(tmp_path / "home" / "data").list("augmented/"))) == augment["images_out"]
    bill = augment["bill"]
    assert bill["invocations"] == 2 and bill["failed_invocations"] == 0      # 4 images in batches of 2
    assert bill["billed_ms"] > 0 and bill["gb_seconds"] > 0 and bill["dollars"] > 0
    assert "3 augmented, 1 failed" in err and "invocations  2 (0 failed)" in err


def test_bad_usage_under_json_leaves_stdout_empty(where, tmp_path, capfd):
    assert main([*where, "upload", str(tmp_path / "nowhere"), "--prefix", "raw", "--json"]) == 2
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ")


@pytest.mark.slow
def test_fashion_mnist_prepare_train_export_predict(where, tmp_path, capfd):
    status, written, _ = run_json(capfd, *where, "fashion-mnist", "--limit", "40")
    assert status == 0
    assert_contract(written, "fashion-mnist")
    assert written["written"] == {"train": 40, "test": 40} and written["images"] == 80

    status, prepared, _ = run_json(capfd, *where, "prepare", "--source", "fashion-mnist/train", "--val-source",
                                   "fashion-mnist/test", "--dataset", "fm", "--workers", "2", "--recipe",
                                   "fashion-mnist")
    assert status == 0
    assert_contract(prepared, "prepare")
    assert prepared["train"] == sum(prepared["shards"]) == 40 and len(prepared["shards"]) == 2
    assert prepared["validation"] == 40 and prepared["skipped"] == 0 and len(prepared["classes"]) == 10
    assert prepared["recipe"]["size"] == 32 and prepared["bill"]["invocations"] >= 3   # a part per shard, and val
    assert prepared["bill"]["s3_requests"]["get"] >= 80              # the pack actions' GETs, an image each

    status, trained, err = run_json(capfd, *where, "train", "--dataset", "fm", "--run", "fm", "--rounds", "1",
                                    "--local-epochs", "1", "--output", tmp_path / "out")
    assert status == 0
    assert_contract(trained, "train")
    assert (trained["rounds_completed"], trained["rounds_run"], trained["workers"]) == (1, 1, 2)
    assert trained["validation"]["count"] == 40 and 0 <= trained["validation"]["accuracy"] <= 1
    assert trained["failures"] == [] and trained["bill"]["invocations"] >= 3           # init, 2 workers, ...
    assert trained["bill"]["s3_requests"]["put"] >= 3                # init's weights, each worker's own
    outputs = trained["outputs"]
    assert Path(outputs["local metrics"]).is_file() and Path(outputs["local plot"]).is_file()
    assert (Path(outputs["tensorboard"]) / "validation").is_dir()                     # a folder per writer
    assert "round   1  workers 2/2" in err                                              # the round line

    status, exported, err = run_json(capfd, *where, "export", "--run", "fm")
    assert status == 0
    assert_contract(exported, "export")
    assert (exported["model"], exported["version"], exported["round"], exported["classes"]) == ("fm", "v1", 1, 10)
    assert exported["input_shape"] == [32, 32, 1] and exported["tflite_bytes"] > 0
    assert "exporting run 'fm'" in err and "try it:" in err

    keys = sorted(DirStore(tmp_path / "home" / "data").list("fashion-mnist/test/"))[:2]
    status, predicted, _ = run_json(capfd, *where, "predict", *[f"store:{k}" for k in keys], "store:raw/none.png",
                                    "--top-k", "2")
    assert status == 1
    assert_contract(predicted, "predict")
    assert (predicted["images"], predicted["predicted"], predicted["failed"]) == (3, 2, 1), predicted["failures"]
    assert predicted["model"] == "fm" and predicted["version"] == "v1"
    assert [r["image"] for r in predicted["results"]] == [f"store:{k}" for k in keys] + ["store:raw/none.png"]
    assert all(len(r["top"]) == 2 for r in predicted["results"][:2])
    assert predicted["failures"][0]["item"] == "store:raw/none.png"
    assert "no image at key" in predicted["failures"][0]["reason"]
    assert predicted["bill"]["invocations"] == 3
    assert predicted["bill"]["s3_requests"]["get"] >= 2              # the images the functions read


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_MODELS / "squeezenet1.1.onnx").is_file(), reason=f"no {SHARED_MODELS}")
def test_import_onnx(where, capfd):
    status, imported, err = run_json(capfd, *where, "import-onnx", SHARED_MODELS / "squeezenet1.1.onnx",
                                     "--labels", SHARED_MODELS / "imagenet_synset_words.txt")
    assert status == 0
    assert_contract(imported, "import-onnx")
    assert (imported["model"], imported["version"], imported["squeezenet"]) == ("squeezenet1.1", "v1", "1.1")
    assert imported["input_shape"] == [224, 224, 3] and imported["classes"] == 1000
    assert imported["max_abs_diff"] < 1e-3 and "importing" in err


@pytest.mark.slow
def test_demo(where, tmp_path, capfd):
    status, demo, err = run_json(capfd, *where, "demo", "--images", "200", "--rounds", "1", "--local-epochs", "1")
    assert status == 0
    assert_contract(demo, "demo")
    assert demo["rounds"] == 1 and demo["workers"] == 2 and 0 <= demo["validation_accuracy"] <= 1
    assert Path(demo["predictions_figure"]).is_file() and Path(demo["training_plot"]).is_file()
    assert demo["bill"]["invocations"] > 10
    # Every step's own report joined the human report on stderr.
    assert all(f"=== {step}/6" in err for step in range(1, 7)) and "images               10 (10 predicted" in err
