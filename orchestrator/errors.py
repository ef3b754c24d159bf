"""One error and exit-code convention for every command.

    0  everything asked for was done
    1  the job ran, but some items failed (images, batches, workers): the summary lists them
    2  bad usage, or nothing was done (a missing dataset, an unknown model, a round that could not close)

A command raises `CommandError` for 2 (or returns 1 or 0); `orchestrator.cli.main` prints
`error: MESSAGE` on stderr, with no stack trace, and exits with the code.
"""

from __future__ import annotations

OK, PARTIAL, FAILED = 0, 1, 2

EXIT_CODES_HELP = """\
exit status:
  0  everything asked for was done
  1  the job ran, but some items failed (listed in the summary)
  2  bad usage, or nothing was done (the message says why and what to do)"""


class CommandError(Exception):
    """Stops a command with a message for the user (no stack trace) and exit status 2."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code
