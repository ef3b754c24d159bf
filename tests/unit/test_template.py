"""template.yaml: lints clean, and agrees with the orchestrator, the layer build and the Dockerfile.

The template is parsed with cfn-lint's decoder (it understands !Ref, !Sub and friends), the
same parser `sam validate --lint` uses.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from cfnlint.api import lint
from cfnlint.config import ManualArgs
from cfnlint.decode.decode import decode_str
from cfnlint.helpers import REGIONS
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dlpipe.datasets.manifest import PREPARED_PREFIX
from dlpipe.runs.run import RUNS_PREFIX
from dlpipe.shared.table import DynamoTable
from orchestrator.functions import FUNCTIONS, REPO_ROOT
from orchestrator.invokers.aws import LambdaInvoker

TEMPLATE = REPO_ROOT / "template.yaml"
LAYER_MAKEFILE = REPO_ROOT / "layers" / "shared" / "Makefile"
DOCKERFILE = REPO_ROOT / "functions" / "train" / "Dockerfile"
STATE = {"DataBucket": "AWS::S3::Bucket", "ModelBucket": "AWS::S3::Bucket",
         "PredictionsTable": "AWS::DynamoDB::Table"}


@pytest.fixture(scope="module")
def template() -> dict:
    decoded, problems = decode_str(TEMPLATE.read_text())
    assert not problems, [str(p) for p in problems]
    return decoded


def resources(template: dict, kind: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def resolve(template: dict, value):
    """A literal, or the Default of the parameter it references."""
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in template["Parameters"]:
        return template["Parameters"][value["Ref"]]["Default"]
    return value


def function_of(template: dict, output: str) -> tuple[str, dict]:
    value = template["Outputs"][output]["Value"]
    assert set(value) == {"Ref"}, f"output {output} should be !Ref of a function, got {value}"
    return value["Ref"], template["Resources"][value["Ref"]]


def refs(node) -> set[str]:
    """Every resource or parameter a node refers to (Ref, GetAtt, names in Sub strings)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text)}
                found |= refs(value[1]) if isinstance(value, list) else set()
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs(item)
    return found


def makefile_default(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(\S+)", LAYER_MAKEFILE.read_text(), re.MULTILINE)
    assert match, f"{LAYER_MAKEFILE} should set a default for {name}"
    return match.group(1)


def test_template_passes_cfn_lint_in_every_region():
    """What `sam validate --lint` runs, with informational checks too."""
    matches = lint(TEMPLATE.read_text(), config=ManualArgs(include_checks=["I"], regions=REGIONS))
    assert not matches, "\n".join(str(m) for m in matches)


def test_every_orchestrator_output_names_the_right_resource(template):
    for spec in FUNCTIONS.values():
        _name, resource = function_of(template, spec.output)
        assert resource["Type"] == "AWS::Serverless::Function", spec.output
    for output, logical in {"DataBucketName": "DataBucket", "ModelBucketName": "ModelBucket",
                            "PredictionsTableName": "PredictionsTable"}.items():
        assert template["Outputs"][output]["Value"] == {"Ref": logical}


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_memory_and_timeout_match_orchestrator_functions(template, function):
    spec = FUNCTIONS[function]
    _, resource = function_of(template, spec.output)
    props = resource["Properties"]
    assert int(resolve(template, props["MemorySize"])) == spec.memory_mb
    assert int(resolve(template, props["Timeout"])) == spec.timeout_s


@pytest.mark.parametrize("function", ["augment", "predict"])
def test_zip_functions_run_the_orchestrators_handler_on_the_shared_layer(template, function):
    spec = FUNCTIONS[function]
    _, resource = function_of(template, spec.output)
    props = resource["Properties"]
    assert props.get("PackageType", "Zip") == "Zip"
    code_dir = (REPO_ROOT / props["CodeUri"]).resolve()
    assert code_dir == spec.handler_path.parent
    module, _, attr = props["Handler"].partition(".")
    assert (module + ".py", attr) == (spec.handler_path.name, spec.handler_name)
    assert props["Layers"] == [{"Ref": "SharedLayer"}]
    assert props["Runtime"] == {"Ref": "PythonRuntime"}


def test_zip_functions_bring_no_requirements_of_their_own(template):
    """Their dependencies live in the layer, built for Lambda's platform: a requirements.txt
    would make `sam build` pip-install for the build machine (and require its python3.12)."""
    for name, resource in resources(template, "AWS::Serverless::Function").items():
        code_uri = resource["Properties"].get("CodeUri")
        if code_uri:
            assert not (REPO_ROOT / code_uri / "requirements.txt").exists(), name


def test_layer_is_built_by_the_makefile_for_the_functions_runtime_and_architecture(template):
    layer = template["Resources"]["SharedLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert (REPO_ROOT / layer["Properties"]["ContentUri"] / "Makefile").resolve() == LAYER_MAKEFILE
    assert "build-SharedLayer:" in LAYER_MAKEFILE.read_text()
    assert layer["Properties"]["CompatibleRuntimes"] == [{"Ref": "PythonRuntime"}]
    runtime = template["Parameters"]["PythonRuntime"]
    assert runtime["Default"] == f"python{makefile_default('LAMBDA_PYTHON')}"
    assert runtime["Default"] in runtime["AllowedValues"]
    # Amazon Linux 2023 runtimes only: python3.11 and older run on Amazon Linux 2 (glibc 2.26).
    assert all(tuple(map(int, r.removeprefix("python").split("."))) >= (3, 12) for r in runtime["AllowedValues"])
    assert layer["Properties"]["CompatibleArchitectures"] == [{"Ref": "Architecture"}]
    assert template["Globals"]["Function"]["Architectures"] == [{"Ref": "Architecture"}]
    assert template["Parameters"]["Architecture"]["Default"] == makefile_default("LAMBDA_ARCH")


def test_train_is_a_container_image_built_from_the_repository_root(template):
    _, resource = function_of(template, FUNCTIONS["train"].output)
    props, meta = resource["Properties"], resource["Metadata"]
    assert props["PackageType"] == "Image"
    assert not {"Handler", "Runtime", "Layers", "CodeUri"} & set(props)
    assert meta["DockerContext"] == "."
    assert (REPO_ROOT / meta["Dockerfile"]).resolve() == DOCKERFILE
    assert meta["DockerTag"] and meta["DockerTag"] != "latest"
    storage = int(resolve(template, props["EphemeralStorage"]["Size"]))
    cache = int(resolve(template, props["Environment"]["Variables"]["DLPIPE_SHARD_CACHE_MB"]))
    assert 512 < storage <= 10240 and cache + 512 <= storage


def test_every_function_gets_the_stores_from_the_environment(template):
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["DLPIPE_DATA_URL"] == {"Fn::Sub": "s3://${DataBucket}"}
    assert variables["DLPIPE_MODEL_URL"] == {"Fn::Sub": "s3://${ModelBucket}"}
    assert variables["DLPIPE_TABLE_URL"] == {"Fn::Sub": "dynamodb://${PredictionsTable}"}


# Read-only policy templates: every write is an inline statement, so its resources can be checked.
ALLOWED_POLICY_TEMPLATES = {"S3ReadPolicy"}
# The only prefix augment may write in the data bucket (template.yaml, AugmentFunction): the
# orchestrator's `augment --output` must lie under it.
AUGMENT_OUTPUT_ROOT = "augmented"
# Keys no function may write: what predict serves, and originals as `upload` and the demo put them.
SERVED_MODEL_KEYS = ["models/flowers/latest", "models/flowers/20250101-120000/model.tflite",
                     "models/flowers/20250101-120000/meta.json"]
UPLOADED_KEYS = ["raw/cat/x.jpg", "fashion-mnist/train/0/00001.png", "photos/dog/y.jpeg"]


def test_policies_are_least_privilege_and_scoped_to_this_stack(template):
    for name, resource in resources(template, "AWS::Serverless::Function").items():
        policies = resource["Properties"].get("Policies", [])
        assert policies, f"{name} has no policies: SAM would not scope it"
        assert "Role" not in resource["Properties"], f"{name}: a hand-made role escapes these checks"
        for policy in policies:
            assert isinstance(policy, dict), f"{name}: managed policy {policy!r} is not scoped to this stack"
            (kind, body), = policy.items()
            if kind == "Statement":
                for statement in body:
                    assert statement["Effect"] == "Allow"
                    actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                    assert all("*" not in a for a in actions), f"{name}: wildcard action in {actions}"
                    res = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                    assert "*" not in res, f"{name}: Resource '*'"
                    assert all(refs(r) and refs(r) <= set(STATE) for r in res), f"{name}: {res} not this stack's"
            else:
                assert kind in ALLOWED_POLICY_TEMPLATES, f"{name}: unexpected policy template {kind}"
                assert refs(body) and refs(body) <= set(STATE), f"{name}: {kind} {body} not scoped to this stack"


def test_only_predict_writes_the_table_and_nobody_deletes(template):
    for name, resource in resources(template, "AWS::Serverless::Function").items():
        text = repr(resource["Properties"]["Policies"])
        assert ("PredictionsTable" in text) == (name == "PredictFunction"), name
        assert "Delete" not in text and "Crud" not in text, f"{name} may delete: {text}"


def inline_statements(resource: dict) -> list[dict]:
    return [s for policy in resource["Properties"].get("Policies", [])
            if isinstance(policy, dict) and "Statement" in policy for s in policy["Statement"]]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def s3_writes(resource: dict) -> set[tuple[str, str]]:
    """(bucket, key pattern) pairs that a function's inline statements let it write."""
    found = set()
    for statement in inline_statements(resource):
        if not any(a.startswith("s3:") for a in as_list(statement["Action"])):
            continue
        for arn in as_list(statement["Resource"]):
            match = re.fullmatch(r"\$\{(\w+)\.Arn\}/(.+)", arn.get("Fn::Sub", "") if isinstance(arn, dict) else "")
            assert match, f"S3 write to {arn}: expected !Sub \"${{Bucket.Arn}}/prefix/*\""
            found.add((match[1], match[2]))
    return found


def test_functions_write_only_objects_and_table_items(template):
    for name, resource in resources(template, "AWS::Serverless::Function").items():
        for statement in inline_statements(resource):
            assert set(as_list(statement["Action"])) <= {"s3:PutObject", "dynamodb:PutItem"}, (name, statement)


def test_train_writes_only_run_files_and_packed_shards(template):
    """Not models/: a train event must not be able to replace what predict serves."""
    _, resource = function_of(template, FUNCTIONS["train"].output)
    assert s3_writes(resource) == {("ModelBucket", f"{RUNS_PREFIX}/*"), ("DataBucket", f"{PREPARED_PREFIX}/*")}


def test_augment_writes_only_under_its_output_root(template):
    _, resource = function_of(template, FUNCTIONS["augment"].output)
    assert s3_writes(resource) == {("DataBucket", f"{AUGMENT_OUTPUT_ROOT}/*")}


def test_no_function_can_overwrite_served_models_or_uploaded_originals(template):
    """Why the data bucket needs no versioning: functions write only what they derive, under
    fixed prefixes of their own, and never where `upload` puts originals."""
    owners: dict[str, str] = {}
    for name, resource in resources(template, "AWS::Serverless::Function").items():
        for bucket, pattern in s3_writes(resource):
            assert re.fullmatch(r"[a-z0-9-]+/\*", pattern), f"{name}: {bucket}/{pattern} is not one fixed prefix"
            keys = SERVED_MODEL_KEYS if bucket == "ModelBucket" else UPLOADED_KEYS
            assert not [k for k in keys if fnmatch.fnmatchcase(k, pattern)], f"{name} may write {bucket}/{pattern}"
            assert owners.setdefault(f"{bucket}/{pattern}", name) == name, f"{bucket}/{pattern} has two writers"
    data = template["Resources"]["DataBucket"]["Properties"]
    assert "VersioningConfiguration" not in data  # the decision above; the model bucket keeps versions


def test_predict_may_only_add_prediction_records(template):
    """A conditional PutItem: no UpdateItem or BatchWriteItem (DynamoDBWritePolicy), no reads."""
    for name, resource in resources(template, "AWS::Serverless::Function").items():
        grants = [(a, r) for s in inline_statements(resource) for a in as_list(s["Action"])
                  for r in as_list(s["Resource"]) if a.startswith("dynamodb:")]
        expected = [("dynamodb:PutItem", {"Fn::GetAtt": ["PredictionsTable", "Arn"]})]
        assert grants == (expected if name == "PredictFunction" else []), name


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_function_is_capped_by_a_concurrency_parameter(template, function):
    """Reserved concurrency: a runaway job cannot take the account's pool or budget."""
    _, resource = function_of(template, FUNCTIONS[function].output)
    cap = resource["Properties"].get("ReservedConcurrentExecutions")
    assert cap, f"{function} has no ReservedConcurrentExecutions"
    condition, capped, uncapped = cap["Fn::If"]
    parameter = capped["Ref"]
    assert uncapped == {"Ref": "AWS::NoValue"}
    assert template["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, "-1"]}]}
    spec = template["Parameters"][parameter]
    assert spec["Type"] == "Number" and spec["MinValue"] == -1
    # One orchestrator at its default --concurrency on Lambda is never throttled by the cap.
    assert spec["Default"] == inspect.signature(LambdaInvoker).parameters["concurrency"].default


def test_concurrency_caps_leave_the_account_its_unreserved_minimum(template):
    defaults = [template["Parameters"][r["Properties"]["ReservedConcurrentExecutions"]["Fn::If"][1]["Ref"]]["Default"]
                for r in resources(template, "AWS::Serverless::Function").values()]
    assert sum(defaults) <= 1000 - 100  # Lambda keeps 100 of the default quota of 1,000 unreserved


def test_predictions_table_outlives_the_stack(template):
    table = template["Resources"]["PredictionsTable"]
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Retain", "Retain")


NOT_APPLICABLE_CHECKS = {"CKV_AWS_116", "CKV_AWS_117", "CKV_AWS_173",   # DLQ, VPC, env KMS (functions)
                         "CKV_AWS_119", "CKV_AWS_158",                  # customer KMS keys: table, log groups
                         "CKV_AWS_18", "CKV_AWS_21"}                    # S3 access logs; data bucket versions


def test_checkov_skips_only_what_does_not_apply_and_says_why(template):
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert skip["id"] in NOT_APPLICABLE_CHECKS, f"{name} skips {skip['id']}"
            assert skip["id"] != "CKV_AWS_21" or name == "DataBucket", "only the data bucket goes unversioned"
            assert len(skip.get("comment", "")) > 20, f"{name} skips {skip['id']} without a reason"


@pytest.mark.parametrize("bucket", ["DataBucket", "ModelBucket"])
def test_buckets_are_private_encrypted_and_refuse_plain_http(template, bucket):
    props = template["Resources"][bucket]["Properties"]
    assert all(props["PublicAccessBlockConfiguration"][k] is True for k in
               ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    rule, = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    policies = [r for r in resources(template, "AWS::S3::BucketPolicy").values()
                if r["Properties"]["Bucket"] == {"Ref": bucket}]
    assert len(policies) == 1
    statement, = policies[0]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": False}}


def test_model_bucket_keeps_versions(template):
    props = template["Resources"]["ModelBucket"]["Properties"]
    assert props["VersioningConfiguration"]["Status"] == "Enabled"


def test_predictions_table_is_on_demand_keyed_by_id_with_point_in_time_recovery(template):
    props = template["Resources"]["PredictionsTable"]["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    # The index DynamoTable.list(model=...) queries: a model's records by time, every attribute.
    [index] = props["GlobalSecondaryIndexes"]
    assert index["IndexName"] == DynamoTable.MODEL_INDEX
    assert index["KeySchema"] == [{"AttributeName": "model", "KeyType": "HASH"},
                                  {"AttributeName": "created", "KeyType": "RANGE"}]
    assert index["Projection"] == {"ProjectionType": "ALL"}
    assert {d["AttributeName"]: d["AttributeType"] for d in props["AttributeDefinitions"]} == \
        {"id": "S", "model": "S", "created": "S"}


def test_samconfig_deploys_stack_dlpipe_non_interactively_in_the_environments_region():
    config = tomllib.loads((REPO_ROOT / "samconfig.toml").read_text())
    assert config["default"]["global"]["parameters"]["stack_name"] == "dlpipe"
    deploy = config["default"]["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["resolve_s3"] is True and deploy["resolve_image_repos"] is True
    assert deploy["confirm_changeset"] is False

    def keys(node) -> set[str]:
        return set(node) | set().union(*(keys(v) for v in node.values() if isinstance(v, dict)))

    assert "region" not in keys(config), "the region comes from AWS_REGION or the profile"
    assert "cached" not in config["default"].get("build", {}).get("parameters", {}), (
        "SAM's build cache cannot see requirements/layer.txt, which the layer's makefile reads")


# --- the train image's Dockerfile -----------------------------------------------------

def requirement_lines(path: Path, seen: set[Path] | None = None) -> list[tuple[Path, str]]:
    """Every requirement in a requirements file, following `-r` includes."""
    seen = seen if seen is not None else set()
    if path in seen:
        return []
    seen.add(path)
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            lines += requirement_lines(path.parent / line.split(None, 1)[1], seen)
        elif not line.startswith("-"):
            lines.append((path, line))
    return lines


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _requirement_name(line: str) -> str:
    return canonicalize_name(Requirement(line).name)


def _is_pin(line: str) -> bool:
    """`name==1.2.3` (a marker's `==` is no pin)."""
    return any(spec.operator in ("==", "===") for spec in Requirement(line).specifier)


def unpinned_pip_arguments(command: str) -> list[str]:
    """Packages of `pip install` commands in a RUN line that are not pinned with ==.

    Requirement files (-r) and constraint files (-c) are looked up in requirements/ by name and
    read line by line: a requirement is pinned by its own == or by an == in a constraint file
    given to the same command.
    """
    problems = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part)
        if "install" not in words or not any(w == "pip" or w.endswith("/pip") or w == "pip3" for w in words):
            continue
        args = words[words.index("install") + 1:]
        wanted, pinned = [], set()
        skip_next = False
        for i, word in enumerate(args):
            if skip_next:
                skip_next = False
                continue
            if word in ("-r", "--requirement", "-c", "--constraint"):
                name = Path(args[i + 1]).name
                path = REPO_ROOT / "requirements" / name
                if not path.exists():
                    problems.append(f"{word} {args[i + 1]} (no requirements/{name} to check)")
                elif word in ("-c", "--constraint"):
                    pinned |= {_requirement_name(line) for _, line in requirement_lines(path) if _is_pin(line)}
                else:
                    wanted += [(f"{p.name}: {line}", line) for p, line in requirement_lines(path)]
                skip_next = True
            elif word in ("-t", "--target", "-i", "--index-url", "--extra-index-url", "-f", "--find-links",
                          "--platform", "--python-version", "--implementation", "--abi", "--root", "--prefix"):
                skip_next = True
            elif word.startswith(("-", ".", "/", "$")):
                continue  # an option, or the project itself from the build context
            else:
                wanted.append((word, word))
        problems += [shown for shown, line in wanted if not _is_pin(line) and _requirement_name(line) not in pinned]
    return problems


def test_train_dockerfile_pins_its_base_image_and_packages():
    assert DOCKERFILE.exists(), f"template.yaml builds TrainFunction from {DOCKERFILE}, which is missing"
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    froms = [[w for w in rest.split() if not w.startswith("--")] for keyword, rest in instructions if keyword == "FROM"]
    assert froms, "no FROM line"
    stages = {words[2] for words in froms if len(words) == 3 and words[1].lower() == "as"}
    for base in (words[0] for words in froms if words[0] not in stages):
        pinned = "@sha256:" in base or re.search(r":[^/:]+$", base)
        assert pinned and not base.endswith(":latest"), f"base image {base} is not pinned to a tag"
        if base.startswith("public.ecr.aws/lambda/") and "@sha256:" not in base:
            # AWS moves 3.12 with every release; the dated tags (3.12.YYYY.MM.DD.HH) stay put.
            assert re.search(r":\d+\.\d+\.\d{4}\.\d{2}\.\d{2}\.\d{2}(-\w+)?$", base), \
                f"base image {base} is a moving tag: pin a dated release or a digest"
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    problems = [p for run in runs for p in unpinned_pip_arguments(run)]
    assert not problems, f"unpinned packages in {DOCKERFILE.name}: {problems}"


def test_train_image_runs_the_orchestrators_handler_and_gets_a_lean_build_context():
    assert DOCKERFILE.exists(), f"template.yaml builds TrainFunction from {DOCKERFILE}, which is missing"
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    commands = [rest for keyword, rest in instructions if keyword == "CMD"]
    spec = FUNCTIONS["train"]
    assert commands and f"{spec.handler_path.stem}.{spec.handler_name}" in commands[-1], commands
    # The context is the repository root: without these exclusions `sam build` sends GBs of venv.
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".venv-sam", ".git", ".aws-sam", ".dlpipe"} <= set(ignored)


def test_the_pin_checker_catches_what_it_should():
    """The Dockerfile check above is only as good as this parser."""
    assert unpinned_pip_arguments("pip install --no-cache-dir numpy==2.4.6 pillow") == ["pillow"]
    assert unpinned_pip_arguments("python -m pip install -t /opt/x keras==3.15.1") == []
    assert unpinned_pip_arguments("apt-get install -y curl && pip3 install tqdm>=4") == ["tqdm>=4"]
    # requirements/train.txt holds ranges; the lock pins them
    assert unpinned_pip_arguments("pip install -r /tmp/req/train.txt -c /tmp/req/constraints.txt") == []
    assert unpinned_pip_arguments("pip install -r /tmp/req/train.txt") == [
        'train.txt: tensorflow-cpu>=2.21,<3; sys_platform == "linux" and platform_machine == "x86_64"',
        'train.txt: tensorflow>=2.21,<3; sys_platform != "linux" or platform_machine != "x86_64"',
        "train.txt: keras>=3.15,<4"]
    assert unpinned_pip_arguments("pip install keras -c /tmp/req/constraints.txt") == []
    assert unpinned_pip_arguments("pip install tqdm -c /tmp/req/constraints.txt && pip install keras") == ["keras"]
    assert unpinned_pip_arguments("pip install -r /tmp/nowhere.txt")[0].startswith("-r /tmp/nowhere.txt")
