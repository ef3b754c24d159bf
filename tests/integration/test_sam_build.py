"""`sam build` of the zip functions and the shared layer, and what it produces.

The train function is a container image: building it needs Docker, which CI does not have,
so it is excluded here explicitly (`--exclude TrainFunction`); its Dockerfile's pins are
checked in tests/unit/test_template.py. The layer build downloads Linux wheels from PyPI.

aws-sam-cli lives in its own venv (`make sam-setup`, requirements/sam.txt); set SAM_CLI to
use another `sam`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dlpipe.shared.layer_target import MACHINES
from orchestrator.functions import FUNCTIONS, REPO_ROOT

UNZIPPED_LIMIT = 262_144_000      # Lambda: function code plus all layers, unzipped, bytes
GLIBC_MINOR_LIMIT = 34            # Amazon Linux 2023 (python3.12 and later runtimes): glibc 2.34
ELF_MACHINE = {"x86_64": 62, "arm64": 183}
ZIP_FUNCTIONS = {"augment": "AugmentFunction", "predict": "PredictFunction"}


def sam_executable() -> Path | None:
    for candidate in (os.environ.get("SAM_CLI"), REPO_ROOT / ".venv-sam" / "bin" / "sam", shutil.which("sam")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="module")
def sam() -> Path:
    path = sam_executable()
    if path is None:
        pytest.skip("aws-sam-cli not found: run `make sam-setup` (or set SAM_CLI to a sam executable)")
    return path


def sam_env() -> dict[str, str]:
    return {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION",
                                                                                        "us-east-1")}


@pytest.fixture(scope="module")
def build(sam, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sam")
    command = [str(sam), "build", "--exclude", "TrainFunction", "--template-file", str(REPO_ROOT / "template.yaml"),
               "--build-dir", str(out / "build"), "--cache-dir", str(out / "cache")]
    done = subprocess.run(command, cwd=REPO_ROOT, env=sam_env(), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return out / "build"


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def built_template(build: Path) -> dict:
    """The built template's layer and functions, read back with cfn-lint's decoder."""
    from cfnlint.decode.decode import decode_str

    template, problems = decode_str((build / "template.yaml").read_text())
    assert not problems
    return template


@pytest.mark.slow
def test_sam_build_produces_the_zip_functions_and_the_layer(build):
    template = built_template(build)
    for logical in ZIP_FUNCTIONS.values():
        code_uri = template["Resources"][logical]["Properties"]["CodeUri"]
        assert (build / code_uri / "app.py").is_file(), f"{logical}: no app.py in {code_uri}"
    layer_uri = template["Resources"]["SharedLayer"]["Properties"]["ContentUri"]
    assert (build / layer_uri / "python" / "dlpipe" / "__init__.py").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("function", sorted(ZIP_FUNCTIONS))
def test_each_zip_function_with_its_layer_stays_under_250_mb_unzipped(build, function):
    code = tree_bytes(build / ZIP_FUNCTIONS[function])
    layer = tree_bytes(build / "SharedLayer")
    print(f"{function}: code {code / 1e6:.2f} MB + layer {layer / 1e6:.1f} MB = {(code + layer) / 1e6:.1f} MB "
          f"of {UNZIPPED_LIMIT / 1e6:.0f} MB")
    assert code + layer < UNZIPPED_LIMIT


def makefile_default(name: str) -> str:
    """The layer makefile's default for a variable: what `sam build` built."""
    text = (REPO_ROOT / "layers" / "shared" / "Makefile").read_text()
    return re.search(rf"^{name}\s*\?=\s*(\S+)", text, re.MULTILINE).group(1)


def elf_files(root: Path):
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and ".so" in path.name:
            with path.open("rb") as f:
                head = f.read(20)
            if head[:4] == b"\x7fELF":
                yield path, head


@pytest.mark.slow
def test_the_layer_holds_binaries_lambda_can_load(build):
    """CPython 3.12 extension modules for the Architecture parameter's default, needing glibc <= 2.34."""
    python, arch = makefile_default("LAMBDA_PYTHON"), makefile_default("LAMBDA_ARCH")
    layer = build / "SharedLayer" / "python"
    abi_tag = "cpython-" + python.replace(".", "")
    wrong_machine, wrong_abi, glibc_needed = [], [], {}
    for path, head in elf_files(layer):
        machine = int.from_bytes(head[18:20], "little")
        if machine != ELF_MACHINE[arch]:
            wrong_machine.append(str(path.relative_to(layer)))
        if ".cpython-" in path.name and abi_tag not in path.name:
            wrong_abi.append(path.name)
        versions = [int(m) for m in re.findall(rb"GLIBC_2\.(\d+)", path.read_bytes())]
        if versions:
            glibc_needed[str(path.relative_to(layer))] = max(versions)
    assert glibc_needed, "no compiled extension found: is numpy in the layer?"
    assert not wrong_machine, f"not {arch}: {wrong_machine[:5]}"
    assert not wrong_abi, f"not built for {abi_tag}: {wrong_abi[:5]}"
    too_new = {p: v for p, v in glibc_needed.items() if v > GLIBC_MINOR_LIMIT}
    assert not too_new, f"need a glibc newer than Lambda's 2.{GLIBC_MINOR_LIMIT}: {too_new}"
    top = {p.name.lower() for p in layer.iterdir()}
    assert {"dlpipe", "numpy", "pil", "ai_edge_litert", "aws_lambda_powertools", "pydantic"} <= top
    assert not {"tensorflow", "keras", "boto3", "botocore"} & top, "TensorFlow stays out; boto3 is in the runtime"


def find_python(version: str) -> str | None:
    """A python{version} on this machine (PATH or pyenv) to load the layer's cp3xx wheels with."""
    found = shutil.which(f"python{version}")
    if found and subprocess.run([found, "-V"], capture_output=True).returncode == 0:
        return found
    pyenv = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    return pyenv[-1] if pyenv else None


def runtime_python(version: str) -> str:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no python{version} on this machine to load the layer's cp{version.replace('.', '')} wheels with")
    return python


IMPORT_CHECK = textwrap.dedent("""
    import io, json, sys
    import app  # first, as Lambda does: the handler's own imports come before anything here
    import numpy as np
    from PIL import Image
    from pydantic import BaseModel
    from aws_lambda_powertools.utilities.parser import parse
    import ai_edge_litert.interpreter

    class Event(BaseModel):
        keys: list[str]

    assert parse(event={"keys": ["a.png"]}, model=Event).keys == ["a.png"]
    buf = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buf, "PNG")
    assert np.asarray(Image.open(io.BytesIO(buf.getvalue()))).sum() == np.arange(48).sum()
    print(json.dumps({"python": sys.version_info[:2], "handler": callable(app.handler),
                      "heavy": sorted(m for m in ("tensorflow", "keras") if m in sys.modules),
                      "numpy": np.__file__}))
""")


def import_function(python: str, code: Path, layer: Path, function: str, tmp_path: Path):
    """As Lambda loads it: the function's code, then /opt/python (the layer), then the
    runtime's boto3; no project venv."""
    runtime = tmp_path / "runtime"  # Lambda's python runtimes ship boto3 (pure Python)
    runtime.mkdir(exist_ok=True)
    site = Path(__import__("boto3").__file__).parent.parent
    for name in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py"):
        if not (runtime / name).exists():
            (runtime / name).symlink_to(site / name)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(map(str, (code, layer, runtime))),
           "DLPIPE_DATA_URL": str(tmp_path / "data"), "DLPIPE_MODEL_URL": str(tmp_path / "models"),
           "DLPIPE_TABLE_URL": f"sqlite:///{tmp_path / 'predictions.sqlite'}",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_LAMBDA_FUNCTION_NAME": FUNCTIONS[function].name}
    return subprocess.run([python, "-s", "-c", IMPORT_CHECK], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


def check_import(done, version: str, layer: Path, function: str) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["python"] == [int(n) for n in version.split(".")] and report["handler"] is True
    assert report["heavy"] == [], f"{function} imports {report['heavy']}: zip functions must not"
    assert report["numpy"].startswith(str(layer))


@pytest.mark.slow
@pytest.mark.parametrize("function", sorted(ZIP_FUNCTIONS))
def test_the_built_function_imports_on_its_runtime_with_only_its_layer(build, function, tmp_path):
    """The zip functions must not pull in TensorFlow."""
    version = makefile_default("LAMBDA_PYTHON")
    code, layer = build / ZIP_FUNCTIONS[function], build / "SharedLayer" / "python"
    assert json.loads((layer / "dlpipe" / "layer_target.json").read_text()) == {
        "python": version, "machine": MACHINES[makefile_default("LAMBDA_ARCH")]}
    check_import(import_function(runtime_python(version), code, layer, function, tmp_path), version, layer, function)


def other_runtimes() -> list[str]:
    """The template's PythonRuntime choices besides the default (which `sam build` built)."""
    from cfnlint.decode.decode import decode_str

    template, _ = decode_str((REPO_ROOT / "template.yaml").read_text())
    allowed = template["Parameters"]["PythonRuntime"]["AllowedValues"]
    return [r.removeprefix("python") for r in allowed if r != f"python{makefile_default('LAMBDA_PYTHON')}"]


@pytest.mark.slow
@pytest.mark.parametrize("version", other_runtimes())
def test_every_allowed_runtime_gets_a_layer_that_imports(version, tmp_path):
    """PythonRuntime=python3.13 with a layer built by LAMBDA_PYTHON=3.13, as the README says."""
    python = runtime_python(version)
    out = tmp_path / "layer"
    done = subprocess.run(["make", "-f", str(REPO_ROOT / "layers" / "shared" / "Makefile"), "build-SharedLayer",
                           f"ARTIFACTS_DIR={out}", f"LAMBDA_PYTHON={version}", f"PIP={sys.executable} -m pip"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for function in ZIP_FUNCTIONS:
        code = REPO_ROOT / "functions" / function
        check_import(import_function(python, code, out / "python", function, tmp_path), version, out / "python",
                     function)


@pytest.mark.slow
def test_a_layer_built_for_another_python_stops_the_function_with_what_to_do(build, tmp_path):
    """Without the check, numpy (or pydantic-core) fails deep in its import, naming neither cause nor cure."""
    built = makefile_default("LAMBDA_PYTHON")
    found = {v: find_python(v) for v in ("3.13", "3.12", "3.11") if v != built}
    other = next((v for v, python in found.items() if python), None)
    if other is None:
        pytest.skip("no second Python version on this machine to load the layer with")
    done = import_function(found[other], build / ZIP_FUNCTIONS["predict"], build / "SharedLayer" / "python",
                           "predict", tmp_path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("dlpipe.shared.layer_target.LayerMismatch: the shared layer was built for Python "
                           f"{built} on "), last
    assert f"runs Python {other}" in last and f"LAMBDA_PYTHON={other}" in last
    assert f"PythonRuntime=python{other}" in last


TRANSLATE = textwrap.dedent("""
    import json, sys
    from samcli.yamlhelper import yaml_parse
    from samtranslator.translator.transform import transform

    class ManagedPolicies:  # SAM asks IAM for these only when a template names one by name
        def load(self):
            return {}

    template = yaml_parse(open(sys.argv[1]).read())
    for resource in template["Resources"].values():  # what `sam validate` does before translating
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = "s3://bucket/code.zip"
        if props.get("PackageType") == "Image":
            props["ImageUri"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:v1"
    print(json.dumps(transform(template, {}, ManagedPolicies())))
""")


def test_sam_expands_the_policies_to_no_wildcard_and_only_this_stacks_resources(sam, tmp_path):
    python = sam.parent / "python"
    if not python.exists():
        pytest.skip(f"{sam} is not in a venv with samtranslator to translate the template with")
    script = tmp_path / "translate.py"
    script.write_text(TRANSLATE)
    done = subprocess.run([str(python), str(script), str(REPO_ROOT / "template.yaml")], env=sam_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    resources = json.loads(done.stdout)["Resources"]
    roles = {name: r for name, r in resources.items() if r["Type"] == "AWS::IAM::Role"}
    assert set(roles) == {"AugmentFunctionRole", "TrainFunctionRole", "PredictFunctionRole"}
    ours = {"DataBucket", "ModelBucket", "PredictionsTable"}
    for name, role in roles.items():
        assert role["Properties"]["ManagedPolicyArns"] == [
            "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"], name  # logs only
        for policy in role["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert statement["Effect"] == "Allow"
                assert all("*" not in action for action in actions), f"{name}: {actions}"
                targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                for target in targets:
                    text = json.dumps(target)
                    assert target != "*" and any(r in text for r in ours), f"{name}: {text}"
