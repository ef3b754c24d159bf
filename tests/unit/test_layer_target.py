"""The check that the shared layer fits the Python and CPU that load it (dlpipe.shared.layer_target)."""

from __future__ import annotations

import json

import pytest

from dlpipe.shared.layer_target import LayerMismatch, check_layer_target


def marker(tmp_path, python: str = "3.12", machine: str = "x86_64"):
    path = tmp_path / "layer_target.json"
    path.write_text(json.dumps({"python": python, "machine": machine}))
    return path


def test_outside_the_built_layer_there_is_nothing_to_check(tmp_path):
    check_layer_target(tmp_path / "layer_target.json", "3.99", "sparc")


def test_a_layer_built_for_this_python_and_cpu_passes(tmp_path):
    check_layer_target(marker(tmp_path), "3.12", "x86_64")


def test_another_python_is_refused_with_the_build_that_fits(tmp_path):
    with pytest.raises(LayerMismatch) as err:
        check_layer_target(marker(tmp_path), "3.13", "x86_64")
    message = str(err.value)
    assert "built for Python 3.12 on x86_64, but this function runs Python 3.13 on x86_64" in message
    assert "LAMBDA_PYTHON=3.13 LAMBDA_ARCH=x86_64 sam build" in message
    assert "PythonRuntime=python3.13 Architecture=x86_64" in message


def test_another_cpu_is_refused_in_lambdas_own_architecture_names(tmp_path):
    with pytest.raises(LayerMismatch) as err:
        check_layer_target(marker(tmp_path), "3.12", "aarch64")
    assert "LAMBDA_ARCH=arm64" in str(err.value) and "Architecture=arm64" in str(err.value)


def test_the_mismatch_is_an_import_error_as_lambda_reports_a_broken_handler_module(tmp_path):
    assert issubclass(LayerMismatch, ImportError)
