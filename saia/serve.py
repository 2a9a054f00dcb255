"""``saia serve``: the proxy, the controller and the link to the cluster in one process.

The proxy (uvicorn, on the main thread's event loop) and the controller (its
own thread, pass after pass) share the Hub's live projections and one
DemandTracker: requests waiting for a service with no ready job count as its
demand and wake the controller at once. The controller's thread is the only
one that brings service state and keys up to the log, so API keys issued or
revoked by ``saia keys`` in another process take effect within one controller
pass. A third thread keeps the accounting tables up to the log, every second.

On SIGTERM every projection is checkpointed, so the next start applies nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn

from saia import bootstrap
from saia.adapters.lock import FileLock
from saia.adapters.store import SqliteStore
from saia.config import Config, ConfigError
from saia.controller import Controller, run
from saia.demand import DemandTracker
from saia.hub import Hub
from saia.proxy.app import create_app
from saia.proxy.bounded_head import bounded
from saia.proxy.keys import KeyChecker
from saia.recording import GroupCommitter

log = logging.getLogger(__name__)

# Seconds between catch-ups of the accounting tables.
ACCOUNTING_INTERVAL = 1.0
# How long start-up waits for the controller to check the log against Slurm before
# requests are let in; beyond it, they are served from what the log says.
FIRST_PASS_WAIT = 30.0


class ControllerThread:
    """Controller passes beside the proxy; a crash stops the whole process, so that a
    supervisor restarts it rather than the proxy serving on with nobody scaling."""

    def __init__(
        self, controller: Controller, lock: FileLock, on_crash: Callable[[], None]
    ) -> None:
        self._controller = controller
        self._lock = lock
        self._on_crash = on_crash
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="saia-controller", daemon=True)
        self.crashed = False
        # Set once the first pass is done: until then the projections are the log's
        # word, which after a restart may still call ready a job Slurm no longer runs.
        self.first_pass = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._controller.wake()
        self._thread.join()

    def _run(self) -> None:
        try:
            run(self._controller, self._lock, self._stop, lambda _: self.first_pass.set())
        except BaseException:
            log.exception("the controller stopped")
            self.crashed = True
            self._on_crash()
        finally:
            self.first_pass.set()


class AccountingThread:
    """Brings the accounting tables up to the log every ACCOUNTING_INTERVAL; a store that
    cannot be read or written is tried again at the next interval."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="saia-accounting", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(ACCOUNTING_INTERVAL):
            try:
                self._hub.account()
            except Exception:  # the store's errors, whichever backend: try again later
                log.exception("accounting could not catch up with the log")


class Serving:
    """The whole hub, built from a configuration; ``run`` it, ``stop`` it from elsewhere."""

    def __init__(self, config: Config) -> None:
        self._store_lock = sole_hub_of(config)
        try:
            self.hub = bootstrap.hub_for(config)
        except BaseException:
            self._release_store()
            raise
        try:
            # One saia serve to a store: what the log shows in flight was the last one's.
            abandoned = self.hub.abandon_requests_in_flight(time.time())
            if abandoned:
                log.warning("%d request(s) in flight when saia serve last stopped: recorded "
                            "as abandoned (counted, their ends unknown)", abandoned)  # fmt: skip
            access = bootstrap.cluster_access(config, self.hub)
            self.demand = DemandTracker()
            self.controller = bootstrap.controller_for(config, self.hub, access, self.demand)
            self.recorder = GroupCommitter(self.hub.log,
                                           hold_limit=config.proxy.store_outage_buffer)  # fmt: skip
        except BaseException:
            self.hub.close()
            self._release_store()
            raise
        keys = KeyChecker(lambda: self.hub.keys.keys)
        app = create_app(self.hub, self.demand, self.recorder, access.backend(), config.proxy,
                         self.controller.wake, keys, access.link_up)  # fmt: skip
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.listen.host,
                port=config.listen.port,
                # httptools, a C parser (uvicorn's default h11 is pure Python), with a
                # bound on the request head.
                http=bounded(config.proxy.max_head_bytes),
                loop="uvloop",
                lifespan="off",
                access_log=False,  # every request is an event in the log already
                log_config=None,  # the root logger's format, set by the CLI
                timeout_graceful_shutdown=int(config.proxy.shutdown_grace),
            )
        )
        self._passes = ControllerThread(self.controller, bootstrap.controller_lock(config),
                                        self.stop)  # fmt: skip
        self._accounting = AccountingThread(self.hub)

    def run(self) -> int:
        """Serve until SIGINT or SIGTERM (on the main thread) or ``stop``; then close all.

        Requests are let in after the controller's first pass, so that no request
        is routed to a job that ended while the hub was down.

        In-flight requests get ``shutdown_grace`` seconds. Exit status 1 if the
        controller crashed; if the server cannot start (its port is taken, say),
        uvicorn exits with its own status, 3.
        """
        if threading.current_thread() is threading.main_thread():
            # uvicorn handles SIGINT and SIGTERM while it serves, then restores the
            # handlers found and raises the signal again. With the default ones, that
            # would end the process before the last events reach the log.
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, _already_handled)
        self._passes.start()
        self._accounting.start()
        if not self._passes.first_pass.wait(FIRST_PASS_WAIT):
            log.warning("no controller pass within %g s; serving from the log's state",
                        FIRST_PASS_WAIT)  # fmt: skip
        try:
            self.server.run()
        finally:
            self._passes.stop()
            self._accounting.stop()
            self.recorder.close()
            self._checkpoint()
            self.hub.close()
            self._release_store()
        return 0 if self.server.started and not self._passes.crashed else 1

    def stop(self) -> None:
        self.server.should_exit = True

    def _release_store(self) -> None:
        if self._store_lock is not None:
            self._store_lock.release()

    def _checkpoint(self) -> None:
        """Everything recorded, applied and checkpointed, so the next start applies nothing."""
        try:
            self.hub.refresh()
            self.hub.account()
            self.hub.checkpoint()
        except Exception:  # the store's errors: the next start applies what is missing
            log.exception("projections not checkpointed at shutdown")


def sole_hub_of(config: Config) -> FileLock | None:
    """The embedded SQLite store holds one hub: held by this one while it runs (a flock
    beside the database, dropped however the process ends), refused to a second.

    A second ``saia serve`` on the same file would record the first one's requests in
    flight as abandoned, run a controller that waits on the first one's lock, and route
    by projections that never see the first one's events. Other commands (``saia keys``,
    ``saia status``) still write and read beside it, one transaction at a time.
    """
    if not isinstance(config.store, SqliteStore):
        return None
    lock = FileLock(Path(f"{config.store.path}.hub-lock"))
    if not lock.acquire(blocking=False):
        message = (f"another saia serve uses the SQLite store {config.store.path}; it holds "
                   "one hub (stop that one first, or put replicas on PostgreSQL)")  # fmt: skip
        raise ConfigError(config.path, message)
    return lock


def _already_handled(signum: int, frame: FrameType | None) -> None:
    log.info("stopped by %s", signal.Signals(signum).name)
