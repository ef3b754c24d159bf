"""A lease on a training run: one trainer at a time, on any store, with no lock server.

Two `train` commands on one run would train (and bill) its rounds twice, and one would delete
the workers' files the other still reads. So a trainer holds the run's lease while it works:

    runs/<run>/lease/<generation>.json   {"holder", "host", "pid", "acquired", "expires", "released"}

The newest generation is the lease. A trainer takes it by creating the next generation with the
store's conditional create (O_EXCL on a directory, If-None-Match on S3): of two racing, one wins.
It may only when the newest is released, expired, or held by a process of this machine that is
gone (an orchestrator killed with SIGKILL releases nothing). The holder renews it from a thread
every quarter of its term and before every commit, and releases it at the end; a holder that
finds a newer generation has lost the run (it was away longer than the term) and stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from datetime import UTC, datetime

from dlpipe.shared.store import StoreError

LEASE_SECONDS = 120.0     # a killed trainer's lease lapses after this; renewed every quarter of it
_GENERATION = re.compile(r"(\d{6,})\.json")


class LeaseHeld(RuntimeError):
    """Another trainer holds the run; the message names it and when its lease ends."""


class LeaseLost(RuntimeError):
    """This trainer's lease was taken over: it must stop before committing anything."""


def _clock_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _process_gone(holder: dict) -> bool:
    """The holder was a process of this machine that no longer runs."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:          # EPERM: it runs, as another user
        return False
    return False


class RunLease:
    """The lease of one run in one store; `with RunLease(...).acquire():` holds it for the block."""

    def __init__(self, store, run: str, term_s: float = LEASE_SECONDS, clock=time.time) -> None:
        self.store, self.run, self.term_s, self.clock = store, run, term_s, clock
        self.prefix = f"runs/{run}/lease/"
        self.generation: int | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: LeaseLost | None = None
        self._acquired = 0.0

    def _key(self, generation: int) -> str:
        return f"{self.prefix}{generation:06d}.json"

    def _generations(self) -> list[int]:
        found = (_GENERATION.fullmatch(key[len(self.prefix):]) for key in self.store.list(self.prefix))
        return sorted(int(m.group(1)) for m in found if m)

    def _read(self, generation: int) -> dict | None:
        """The lease record, or None when it is gone or unreadable (a damaged lease binds no one)."""
        try:
            record = json.loads(self.store.get(self._key(generation)))
            return record if isinstance(record, dict) and isinstance(record.get("expires"), int | float) else None
        except (ValueError, StoreError):
            return None

    def _record(self, released: bool = False) -> bytes:
        now = self.clock()
        return json.dumps({"holder": self.holder, "host": socket.gethostname(), "pid": os.getpid(),
                           "acquired": self._acquired or now, "expires": now + self.term_s,
                           "released": released}).encode()

    def _free(self, record: dict | None) -> bool:
        return record is None or bool(record.get("released")) or record["expires"] <= self.clock() \
            or _process_gone(record)

    def acquire(self) -> RunLease:
        """Take the lease, or raise LeaseHeld naming its holder and when it ends."""
        for _ in range(5):
            generations = self._generations()
            newest = generations[-1] if generations else 0
            record = self._read(newest) if newest else None
            if newest and not self._free(record):
                raise LeaseHeld(self._held_message(record or {}))
            self._acquired = self.clock()
            if self.store.create(self._key(newest + 1), self._record()):
                self.generation = newest + 1
                for old in generations:   # older generations bind no one: keep the folder small
                    self.store.delete(self._key(old))
                self._start_heartbeat()
                return self
        raise LeaseHeld(f"run {self.run!r}: other trainers keep taking its lease; try again in a minute")

    def _held_message(self, record: dict) -> str:
        since = _clock_text(record["acquired"]) if isinstance(record.get("acquired"), int | float) else "?"
        return (f"run {self.run!r} is being trained right now by {record.get('holder', '?')} (since {since}); "
                f"its lease ends at {_clock_text(record['expires'])} unless that trainer renews it, which it "
                f"does while it runs. Wait for it to finish, or stop it; a trainer that was killed lets "
                f"go of the run when its lease ends")

    def renew(self) -> None:
        """Extend the lease; LeaseLost if another trainer took it meanwhile (checked before every commit)."""
        with self._lock:
            if self._lost is not None:
                raise self._lost
            if self.generation is None:
                return
            generations = self._generations()
            if not generations or generations[-1] != self.generation:
                self._lost = LeaseLost(f"run {self.run!r}: another trainer took over this run's lease (this one "
                                       f"was out of touch for over {self.term_s:.0f} s); stopping before it "
                                       "commits anything")
                raise self._lost
            self.store.put(self._key(self.generation), self._record())

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.term_s / 4):
                with contextlib.suppress(Exception):   # a store hiccup: the next beat tries again
                    self.renew()

        self._thread = threading.Thread(target=beat, name=f"lease-{self.run}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Let go of the run (if still ours): the next trainer need not wait for the term to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self.generation is not None and self._lost is None:
                with contextlib.suppress(Exception):
                    if self._generations()[-1:] == [self.generation]:
                        self.store.put(self._key(self.generation), self._record(released=True))
            self.generation = None

    def __enter__(self) -> RunLease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
