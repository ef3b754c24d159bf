"""Everything a command needs, built once from the command line: stores, invoker, table.

This is the one place where the pluggable parts are chosen: a CloudFormation stack
(`--stack-name`) selects S3, DynamoDB and Lambda; otherwise the embedded default (a local
directory, SQLite and a process pool) with any explicit `--data/--models/--table` URLs.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from dlpipe.shared.config import ENV_HOME, Settings
from orchestrator.invokers.base import Invoker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("where to run (default: everything local, under ./.dlpipe)")
    g.add_argument("--home", default=os.environ.get(ENV_HOME, ".dlpipe"), metavar="DIR",
                   help="directory of the embedded default's store and table (default: %(default)s)")
    g.add_argument("--data", metavar="URL", help="data store: s3://BUCKET[/PREFIX] or a directory")
    g.add_argument("--models", metavar="URL", help="model store: s3://BUCKET[/PREFIX] or a directory")
    g.add_argument("--table", metavar="URL", help="predictions table: dynamodb://TABLE or sqlite:///PATH")
    g.add_argument("--stack-name", metavar="NAME",
                   help="a deployed stack: use its buckets, table and Lambda functions")
    g.add_argument("--invoker", choices=("local", "lambda"),
                   help="engine: local process pool (default) or AWS Lambda (default with --stack-name)")
    g.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="concurrent invocations (default: cores for local, 16 for lambda)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="show the local functions' own logs (Powertools JSON lines, TensorFlow messages)")


@dataclass
class Session:
    settings: Settings
    invoker_kind: str
    concurrency: int | None = None
    function_names: dict[str, str] = field(default_factory=dict)
    architecture: str = "x86_64"
    verbose: bool = False
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
        """Keep local workers' INFO logs out of the progress bars unless asked (or set by the user)."""
        if self.verbose:
            return {}
        quiet = {"POWERTOOLS_LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "2"}
        return {k: v for k, v in quiet.items() if k not in os.environ}

    def data_store(self):
        return self.settings.data_store()

    def model_store(self):
        return self.settings.model_store()

    def close(self) -> None:
        if self._invoker is not None:
            self._invoker.close()
            self._invoker = None


def session_from_args(args: argparse.Namespace) -> Session:
    settings = Settings.from_env({**os.environ, ENV_HOME: args.home})
    function_names: dict[str, str] = {}
    architecture = "x86_64"
    kind = args.invoker or "local"
    if args.stack_name:
        from orchestrator.invokers.aws import StackNotFound, deployed_function_names, stack_architecture, stack_outputs

        try:
            outputs = stack_outputs(args.stack_name)
        except StackNotFound as err:
            raise SystemExit(f"error: {err}") from None
        missing = [k for k in ("DataBucketName", "ModelBucketName", "PredictionsTableName") if k not in outputs]
        if missing:
            raise SystemExit(f"error: stack {args.stack_name!r} has no output(s) {', '.join(missing)}: "
                             "was it deployed from this repository's template.yaml?")
        settings = Settings(data_url=f"s3://{outputs['DataBucketName']}",
                            model_url=f"s3://{outputs['ModelBucketName']}",
                            table_url=f"dynamodb://{outputs['PredictionsTableName']}")
        function_names = deployed_function_names(outputs)
        architecture = stack_architecture(outputs)
        kind = args.invoker or "lambda"
    settings = settings.with_overrides(args.data, args.models, args.table)
    if kind == "lambda" and not function_names:
        raise SystemExit("error: --invoker lambda needs --stack-name to find the deployed functions")
    return Session(settings, kind, args.concurrency, function_names, architecture, verbose=args.verbose)
