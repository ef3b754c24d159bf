"""Library chatter off the console unless --verbose, at the file-descriptor level.

TensorFlow, absl and oneDNN log from C++ straight to file descriptor 2 (and the TFLite
converter's MLIR passes and Keras's SavedModel step print to 1), which neither Python's
logging nor TF_CPP_MIN_LOG_LEVEL fully silences. So: in this process, the TensorFlow work
runs with fds 1 and 2 pointed at a temporary file, replayed on stderr only if it fails
(`native_output_captured`); the local invoker's worker processes write theirs to a log file
under the home directory (`worker_log`), as a Lambda function writes to CloudWatch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

WORKER_LOG = Path("logs") / "workers.log"     # below --home: the last command's worker output


@contextlib.contextmanager
def native_output_captured(verbose: bool = False, expected: tuple[type[BaseException], ...] = ()
                           ) -> Iterator[None]:
    """Run the block with fds 1 and 2 captured; on an exception, show what was captured, then re-raise.

    `expected`: errors whose own message says it all (a label count, a damaged file): the library's
    start-up chatter is not replayed for them.
    """
    if verbose:
        yield
        return
    _flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException as err:
            _restore(saved)
            if not isinstance(err, expected):
                capture.seek(0)
                sys.stderr.write(capture.read().decode("utf-8", "replace"))
            raise
        _restore(saved)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _restore(saved: tuple[int, int]) -> None:
    _flush()
    for fd, original in zip((1, 2), saved, strict=True):
        os.dup2(original, fd)
        os.close(original)


def worker_log(home: str | os.PathLike) -> str:
    """The workers' log file for this command, emptied (the previous command's is replaced); /dev/null
    if the home directory cannot hold it."""
    path = Path(home) / WORKER_LOG
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    except OSError:
        return os.devnull
    return str(path.resolve())
