"""Everything a command needs, built once from the command line: stores, invoker, table.

This is the one place where the pluggable parts are chosen: a CloudFormation stack
(`--stack-name`) selects S3, DynamoDB and Lambda; otherwise the embedded default (a local
directory, SQLite and a process pool) with any explicit `--data/--models/--table` URLs.
Each of these options defaults to a DLPIPE_* environment variable (orchestrator.settings.Placement),
exactly as if it had been typed; the command line wins.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from dlpipe.shared.config import ENV_HOME, Settings
from dlpipe.shared.store import ObjectStore, StoreError
from dlpipe.shared.table import PredictionsTable, TableError, open_table
from orchestrator.errors import CommandError
from orchestrator.invokers.base import Invoker
from orchestrator.quiet import worker_log
from orchestrator.settings import ENV_WORKER_LOG, Placement
from orchestrator.traffic import Meter, MeteredStore

INVOKERS = ("local", "lambda")
STACK_OUTPUTS = ("DataBucketName", "ModelBucketName", "PredictionsTableName")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env, default = Placement.ENV, Placement.from_env()
    g = parser.add_argument_group(
        "where to run (default: everything local, under ./.dlpipe)",
        "Each option defaults to the environment variable in [brackets]; the command line wins.")
    g.add_argument("--home", default=default.home, metavar="DIR",
                   help=f"directory of the embedded default's store and table [{env['home']}] (default: %(default)s)")
    g.add_argument("--data", default=default.data_url, metavar="URL",
                   help=f"data store: s3://BUCKET[/PREFIX] or a directory [{env['data_url']}]")
    g.add_argument("--models", default=default.model_url, metavar="URL",
                   help=f"model store: s3://BUCKET[/PREFIX] or a directory [{env['model_url']}]")
    g.add_argument("--table", default=default.table_url, metavar="URL",
                   help=f"predictions table: dynamodb://TABLE or sqlite:///PATH [{env['table_url']}]")
    g.add_argument("--stack-name", default=default.stack_name, metavar="NAME",
                   help=f"a deployed stack: use its buckets, table and Lambda functions [{env['stack_name']}]")
    g.add_argument("--invoker", default=default.invoker, choices=INVOKERS,
                   help="engine: local process pool (default) or AWS Lambda (default with --stack-name) "
                        f"[{env['invoker']}]")
    g.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="concurrent invocations (default: cores for local, 16 for lambda)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="show the libraries' and the local functions' own logs (Powertools JSON lines, TensorFlow, "
                        "absl and oneDNN messages); without it the local workers' go to HOME/logs/workers.log")


@dataclass
class Session:
    settings: Settings
    invoker_kind: str
    concurrency: int | None = None
    function_names: dict[str, str] = field(default_factory=dict)
    architecture: str = "x86_64"
    verbose: bool = False
    home: str | None = None       # where the local workers' log goes without --verbose
    meter: Meter = field(default_factory=Meter)   # this session's traffic with its stores (the bill's)
    _invoker: Invoker | None = None

    @property
    def invoker(self) -> Invoker:
        """Created on first use: commands that only read the store start no workers."""
        if self._invoker is None:
            if self.invoker_kind == "lambda":
                from orchestrator.invokers.aws import LambdaInvoker

                self._invoker = LambdaInvoker(self.function_names, self.concurrency or 16,
                                              architecture=self.architecture)
            else:
                from orchestrator.invokers.local import LocalInvoker

                self._invoker = LocalInvoker(self.concurrency, env={**self.settings.to_env(), **self.worker_log_env()})
        return self._invoker

    def worker_log_env(self) -> dict[str, str]:
        """Keep local workers' logs out of the progress bars unless asked (or set by the user)."""
        if self.verbose:
            return {}
        quiet = {"POWERTOOLS_LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "2"}
        if self.home is not None:
            quiet[ENV_WORKER_LOG] = worker_log(self.home)
        return {k: v for k, v in quiet.items() if k not in os.environ}

    def data_store(self) -> ObjectStore:
        """Metered (orchestrator.traffic): the summaries price its requests and bytes."""
        try:
            return MeteredStore(self.settings.data_store(), self.meter)
        except StoreError as err:  # a URL no store answers to: the user's to fix, not a crash
            raise CommandError(f"data store: {err}") from None

    def model_store(self) -> ObjectStore:
        try:
            return MeteredStore(self.settings.model_store(), self.meter)
        except StoreError as err:
            raise CommandError(f"model store: {err}") from None

    def table(self) -> PredictionsTable:
        """The predictions table, opened anew: the caller closes it."""
        try:
            return open_table(self.settings.table_url)
        except TableError as err:
            raise CommandError(f"predictions table: {err}") from None

    def close(self) -> None:
        if self._invoker is not None:
            self._invoker.close()
            self._invoker = None


def _from_stack(stack_name: str) -> tuple[Settings, dict[str, str], str]:
    """The stack's stores and table, its functions' deployed names and their architecture."""
    from orchestrator.invokers.aws import StackNotFound, deployed_function_names, stack_architecture, stack_outputs

    try:
        outputs = stack_outputs(stack_name)
    except StackNotFound as err:
        raise CommandError(str(err)) from None
    missing = [k for k in STACK_OUTPUTS if k not in outputs]
    if missing:
        raise CommandError(f"stack {stack_name!r} has no output(s) {', '.join(missing)}: "
                           "was it deployed from this repository's template.yaml?")
    settings = Settings(data_url=f"s3://{outputs['DataBucketName']}",
                        model_url=f"s3://{outputs['ModelBucketName']}",
                        table_url=f"dynamodb://{outputs['PredictionsTableName']}")
    return settings, deployed_function_names(outputs), stack_architecture(outputs)


def session_from_args(args: argparse.Namespace) -> Session:
    if args.invoker not in (None, *INVOKERS):  # only an environment variable can get past argparse's choices
        raise CommandError(f"{Placement.ENV['invoker']}={args.invoker!r}: the invoker is local or lambda")
    settings = Settings.from_env({ENV_HOME: args.home})
    function_names: dict[str, str] = {}
    architecture = "x86_64"
    kind = args.invoker or "local"
    if args.stack_name:
        settings, function_names, architecture = _from_stack(args.stack_name)
        kind = args.invoker or "lambda"
    settings = settings.with_overrides(args.data, args.models, args.table)
    if kind == "lambda" and not function_names:
        raise CommandError(f"stack {args.stack_name!r} has no function outputs (AugmentFunctionName, ...): was it "
                           "deployed from this repository's template.yaml?" if args.stack_name else
                           "--invoker lambda needs --stack-name to find the deployed functions")
    return Session(settings, kind, args.concurrency, function_names, architecture, verbose=args.verbose,
                   home=args.home)
