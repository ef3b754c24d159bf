from pathlib import Path

from dlpipe.shared.config import Settings
from dlpipe.shared.s3_store import S3Store
from dlpipe.shared.store import DirStore


def test_defaults_live_under_home_and_are_absolute(tmp_path):
    s = Settings.from_env({"DLPIPE_HOME": str(tmp_path / "h")})
    assert s.data_url == str(tmp_path / "h" / "data")
    assert s.model_url == str(tmp_path / "h" / "models")
    assert s.table_url == f"sqlite:///{tmp_path / 'h' / 'predictions.sqlite'}"
    assert isinstance(s.data_store().inner, DirStore)    # counted for the function's reply


def test_relative_paths_are_resolved_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    assert Path(s.data_url) == tmp_path / ".dlpipe" / "data"


def test_explicit_urls_and_round_trip_through_env(tmp_path):
    s = Settings.from_env({"DLPIPE_DATA_URL": "s3://data-bucket", "DLPIPE_MODEL_URL": "s3://models/x",
                           "DLPIPE_TABLE_URL": "dynamodb://preds"})
    assert isinstance(s.data_store().inner, S3Store) and s.table_url == "dynamodb://preds"
    assert Settings.from_env(s.to_env()) == s
    t = s.with_overrides(data_url=str(tmp_path))
    assert t.data_url == str(tmp_path) and t.model_url == "s3://models/x"
