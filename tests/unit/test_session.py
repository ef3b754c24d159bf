"""The one place that picks stores, table and engine from the command line."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from orchestrator.cli import build_parser
from orchestrator.errors import CommandError
from orchestrator.session import session_from_args

STACK_TEMPLATE = {
    "Resources": {"Data": {"Type": "AWS::S3::Bucket"}},
    "Outputs": {
        "DataBucketName": {"Value": "stack-data"},
        "ModelBucketName": {"Value": "stack-models"},
        "PredictionsTableName": {"Value": "stack-predictions"},
        "AugmentFunctionName": {"Value": "dlpipe-AugmentFunction-123"},
        "TrainFunctionName": {"Value": "dlpipe-TrainFunction-456"},
        "PredictFunctionName": {"Value": "dlpipe-PredictFunction-789"},
    },
}


def parse(*argv):
    return build_parser().parse_args([*argv, "upload", "somewhere", "--prefix", "raw"])


def test_embedded_default_is_local_under_home(tmp_path):
    session = session_from_args(parse("--home", str(tmp_path)))
    assert session.invoker_kind == "local"
    assert session.settings.data_url == str(tmp_path / "data")
    assert session.settings.table_url.startswith("sqlite:///")


def test_explicit_urls_override_the_default(tmp_path):
    session = session_from_args(parse("--home", str(tmp_path), "--data", "s3://b/p", "--table", "dynamodb://t"))
    assert session.settings.data_url == "s3://b/p"
    assert session.settings.model_url == str(tmp_path / "models")
    assert session.settings.table_url == "dynamodb://t"


def test_lambda_without_a_stack_is_refused_with_advice():
    with pytest.raises(CommandError, match="--stack-name"):
        session_from_args(parse("--invoker", "lambda"))


def test_stack_outputs_select_s3_dynamodb_and_lambda(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        boto3.client("cloudformation").create_stack(StackName="dlpipe", TemplateBody=json.dumps(STACK_TEMPLATE))
        session = session_from_args(parse("--stack-name", "dlpipe"))
        assert session.invoker_kind == "lambda"
        assert session.settings.data_url == "s3://stack-data"
        assert session.settings.model_url == "s3://stack-models"
        assert session.settings.table_url == "dynamodb://stack-predictions"
        assert session.function_names == {"augment": "dlpipe-AugmentFunction-123",
                                          "train": "dlpipe-TrainFunction-456",
                                          "predict": "dlpipe-PredictFunction-789"}
        # The stack's resources, but the functions run locally (what the AWS-path test does).
        local = session_from_args(parse("--stack-name", "dlpipe", "--invoker", "local"))
        assert local.invoker_kind == "local" and local.settings.data_url == "s3://stack-data"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for command in ("upload", "augment"):
        assert command in out


def test_local_workers_are_quiet_unless_verbose(tmp_path, monkeypatch):
    monkeypatch.delenv("POWERTOOLS_LOG_LEVEL", raising=False)
    quiet = session_from_args(parse("--home", str(tmp_path)))
    assert quiet.worker_log_env()["POWERTOOLS_LOG_LEVEL"] == "WARNING"
    assert session_from_args(parse("--home", str(tmp_path), "--verbose")).worker_log_env() == {}
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "DEBUG")  # the user's own choice wins
    assert "POWERTOOLS_LOG_LEVEL" not in quiet.worker_log_env()
