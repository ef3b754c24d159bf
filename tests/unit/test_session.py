"""The one place that picks stores, table and engine from the command line."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from dlpipe.shared.table import SqliteTable
from orchestrator.cli import build_parser
from orchestrator.errors import CommandError
from orchestrator.session import session_from_args
from orchestrator.settings import Placement

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


@pytest.fixture(autouse=True)
def no_placement_from_the_environment(monkeypatch):
    """The developer's own DLPIPE_STACK_NAME & co must not steer these tests; a test sets what it needs."""
    for variable in Placement.ENV.values():
        monkeypatch.delenv(variable, raising=False)


def aws_credentials(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


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
    aws_credentials(monkeypatch)
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


def test_the_session_opens_its_predictions_table(tmp_path):
    session = session_from_args(parse("--home", str(tmp_path), "--table", f"sqlite:///{tmp_path}/p.sqlite"))
    table = session.table()
    try:
        assert isinstance(table, SqliteTable) and table.url == session.settings.table_url
        assert table.url == f"sqlite:///{tmp_path}/p.sqlite" and table.count() == 0
    finally:
        table.close()


# --- the where-to-run options' defaults from DLPIPE_* variables -----------------------------

def test_each_where_to_run_option_defaults_to_its_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "home"))
    assert session_from_args(parse()).settings.model_url == str(tmp_path / "home" / "models")
    monkeypatch.setenv("DLPIPE_DATA_URL", "s3://env-data/p")
    monkeypatch.setenv("DLPIPE_MODEL_URL", str(tmp_path / "env-models"))
    monkeypatch.setenv("DLPIPE_TABLE_URL", "dynamodb://env-table")
    session = session_from_args(parse())
    assert session.settings.data_url == "s3://env-data/p"
    assert session.settings.model_url == str(tmp_path / "env-models")
    assert session.settings.table_url == "dynamodb://env-table"
    assert session.invoker_kind == "local"


def test_the_command_line_wins_over_the_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "env-home"))
    monkeypatch.setenv("DLPIPE_DATA_URL", "s3://env-data")
    monkeypatch.setenv("DLPIPE_TABLE_URL", "dynamodb://env-table")
    session = session_from_args(parse("--home", str(tmp_path / "cli-home"), "--data", str(tmp_path / "cli-data")))
    assert session.settings.data_url == str(tmp_path / "cli-data")
    assert session.settings.model_url == str(tmp_path / "cli-home" / "models")
    assert session.settings.table_url == "dynamodb://env-table"   # not given on the command line


def test_an_empty_variable_is_the_same_as_none(tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIPE_STACK_NAME", "")
    monkeypatch.setenv("DLPIPE_DATA_URL", "")
    session = session_from_args(parse("--home", str(tmp_path)))
    assert session.invoker_kind == "local" and session.settings.data_url == str(tmp_path / "data")


def test_invoker_from_the_variable_is_checked_and_needs_a_stack(monkeypatch):
    monkeypatch.setenv("DLPIPE_INVOKER", "lambda")
    with pytest.raises(CommandError, match="needs --stack-name"):
        session_from_args(parse())
    monkeypatch.setenv("DLPIPE_INVOKER", "gpu")
    with pytest.raises(CommandError, match="DLPIPE_INVOKER='gpu': the invoker is local or lambda"):
        session_from_args(parse())
    assert session_from_args(parse("--invoker", "local")).invoker_kind == "local"


def test_a_stack_from_the_variable_is_used_like_the_option(monkeypatch):
    aws_credentials(monkeypatch)
    monkeypatch.setenv("DLPIPE_STACK_NAME", "dlpipe")
    with mock_aws():
        boto3.client("cloudformation").create_stack(StackName="dlpipe", TemplateBody=json.dumps(STACK_TEMPLATE))
        session = session_from_args(parse())
        assert session.invoker_kind == "lambda" and session.settings.data_url == "s3://stack-data"
        assert session.function_names["train"] == "dlpipe-TrainFunction-456"
        monkeypatch.setenv("DLPIPE_INVOKER", "local")
        assert session_from_args(parse()).invoker_kind == "local"
        assert session_from_args(parse("--invoker", "lambda")).invoker_kind == "lambda"  # the command line wins
        with pytest.raises(CommandError, match="cannot read stack 'other'"):
            session_from_args(parse("--stack-name", "other"))


def test_help_names_the_variable_of_each_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option, variable in [("--home", "DLPIPE_HOME"), ("--data", "DLPIPE_DATA_URL"), ("--models", "DLPIPE_MODEL_URL"),
                             ("--table", "DLPIPE_TABLE_URL"), ("--stack-name", "DLPIPE_STACK_NAME"),
                             ("--invoker", "DLPIPE_INVOKER")]:
        assert f"[{variable}]" in out, option
    assert "the command line wins" in out


def test_placement_reads_only_its_variables():
    placement = Placement.from_env({"DLPIPE_STACK_NAME": "s", "DLPIPE_INVOKER": "local", "DLPIPE_HOME": "",
                                    "DLPIPE_CACHE": "/elsewhere"})
    assert placement == Placement(stack_name="s", invoker="local")
    assert placement.home == ".dlpipe"
