"""The whole pipeline on the AWS path, with moto_server standing in for AWS.

The buckets and the table are created by CloudFormation (moto's) from template.yaml's own
resource definitions, and the CLI finds them through `--stack-name`, as it would after
`sam deploy`. The functions run in the local invoker (moto cannot run Lambda functions
without Docker); they reach S3 and DynamoDB over HTTP like deployed functions do. At the
end every expected object and record is read back from "AWS".
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from cfnlint.decode.decode import decode_str

from dlpipe.datasets import fashion_mnist
from dlpipe.runs.run import TrainingRun
from dlpipe.train.weights import load_weights
from orchestrator.cli import main

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
STATEFUL = ("AWS::S3::Bucket", "AWS::DynamoDB::Table")
OUTPUTS = ("DataBucketName", "ModelBucketName", "PredictionsTableName")
IMAGES_PER_CLASS = 30


def stateful_stack_template() -> str:
    """The template's buckets, table and their outputs, minus what needs a real deployment."""
    template, problems = decode_str(TEMPLATE.read_text())
    assert not problems, problems
    resources = {k: v for k, v in template["Resources"].items() if v["Type"] in STATEFUL}
    assert {"DataBucket", "ModelBucket", "PredictionsTable"} <= set(resources)
    outputs = {k: v for k, v in template["Outputs"].items() if k in OUTPUTS}
    return json.dumps({"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources, "Outputs": outputs})


@pytest.fixture
def stack(aws_env):
    cfn = boto3.client("cloudformation")
    cfn.create_stack(StackName="dlpipe-e2e", TemplateBody=stateful_stack_template())
    outputs = {o["OutputKey"]: o["OutputValue"]
               for o in cfn.describe_stacks(StackName="dlpipe-e2e")["Stacks"][0]["Outputs"]}
    assert set(outputs) == set(OUTPUTS)
    return outputs


@pytest.fixture
def photos(tmp_path) -> Path:
    """A user's folder of class sub-folders: real Fashion-MNIST images as PNG files."""
    root = tmp_path / "photos"
    counts: dict[str, int] = {}
    for key, data in fashion_mnist.fashion_mnist_pngs("train", limit=1000):
        _, cls, name = key.split("/")
        if counts.get(cls, 0) < IMAGES_PER_CLASS:
            counts[cls] = counts.get(cls, 0) + 1
            (root / cls).mkdir(parents=True, exist_ok=True)
            (root / cls / name).write_bytes(data)
    assert len(counts) == 10
    return root


@pytest.mark.slow
def test_upload_augment_train_export_predict_on_s3_and_dynamodb(stack, photos, tmp_path, capsys):
    base = ["--stack-name", "dlpipe-e2e", "--invoker", "local", "--concurrency", "2", "--home", str(tmp_path / "h")]

    def cli(*argv: str) -> str:
        status = main([*base, *argv])
        out = capsys.readouterr().out
        assert status == 0, f"orchestrator {' '.join(argv)} exited {status}:\n{out}"
        return out

    cli("upload", str(photos), "--prefix", "raw")
    cli("augment", "--source", "raw", "--output", "augmented", "--variants", "original", "flip",
        "--format", "png", "--batch-size", "50")
    cli("prepare", "--source", "augmented", "--dataset", "e2e", "--workers", "2", "--recipe", "fashion-mnist")
    cli("train", "--dataset", "e2e", "--run", "e2e", "--workers", "2", "--rounds", "1", "--local-epochs", "1",
        "--output", str(tmp_path / "out"))
    cli("export", "--run", "e2e", "--name", "e2e")
    probe = min(photos.glob("bag/*.png"))
    predicted = json.loads(cli("predict", str(probe), "store:raw/coat/" + min(photos.glob("coat/*.png")).name,
                               "--model", "e2e", "--json"))["results"]

    # Everything is where the layout says, read back from S3 and DynamoDB.
    s3 = boto3.client("s3")

    def keys(bucket: str, prefix: str) -> list[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    data, models = stack["DataBucketName"], stack["ModelBucketName"]
    raw = keys(data, "raw/")
    assert len(raw) == 10 * IMAGES_PER_CLASS
    augmented = keys(data, "augmented/")
    assert len(augmented) == 2 * len(raw)
    assert {k.split("/")[1] for k in augmented} == {k.split("/")[1] for k in raw}  # class folders kept
    manifest = json.loads(s3.get_object(Bucket=data, Key="datasets/e2e/manifest.json")["Body"].read())
    assert sorted(manifest["classes"]) == sorted(fashion_mnist.FASHION_MNIST_CLASSES)

    from dlpipe.shared.store import open_store

    model_store = open_store(f"s3://{models}")
    assert TrainingRun(model_store, "e2e").latest_round() == 1
    assert len(load_weights(model_store, TrainingRun(None, "e2e").global_key(1))) > 0
    served = keys(models, "models/e2e/")
    for name in ("model.tflite", "labels.json", "recipe.json", "meta.json"):
        assert any(k.endswith("/" + name) for k in served), (name, served)

    assert len(predicted) == 2 and all(p["statusCode"] == 200 for p in predicted)
    assert all(len(p["top"]) == 5 for p in predicted)
    items = boto3.resource("dynamodb").Table(stack["PredictionsTableName"]).scan()["Items"]
    assert {item["id"] for item in items} == {p["id"] for p in predicted}
    by_id = {item["id"]: item for item in items}
    for p in predicted:
        item = by_id[p["id"]]
        assert item["model"] == "e2e" and item["version"] == p["model"]["version"]
        assert [t["label"] for t in item["top"]] == [t["label"] for t in p["top"]]
    assert by_id[predicted[1]["id"]]["image_key"] == "raw/coat/" + min(photos.glob("coat/*.png")).name
    # Listing one model's predictions goes through the template's index on the table.
    listed = json.loads(cli("predictions", "--model", "e2e", "--json"))
    assert sorted(r["id"] for r in listed) == sorted(p["id"] for p in predicted)
    assert [r["created"] for r in listed] == sorted((r["created"] for r in listed), reverse=True)
    assert json.loads(cli("predictions", "--model", "other", "--json")) == []
