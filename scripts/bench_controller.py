#!/usr/bin/env python3
"""Controller figures on the real Slurm dev cluster (issue 3).

    .venv/bin/python scripts/bench_controller.py [--trials 10] [--jobs 50]

Needs the dev cluster (scripts/dev-cluster up; source its env file). Measures:

- cold start: from a request starting to wait (controller woken) to sbatch being
  called, and from the service accepting connections on its port (watched every
  2 ms on 127.0.0.1, which every dev node is) to saia recording it ready
  (BecameReady), over fresh services started from zero;
- pass cost: one steady controller pass with N live, ready jobs, against the
  time of the squeue call inside that pass (the baseline, same run).

Prints a table and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from saia import bootstrap, catalog, config
from saia.adapters.slurm_local import LocalSlurm
from saia.controller import run
from saia.domain.slurm import SlurmJob
from saia.domain.spec import ServiceSpec
from saia.ports import SubmitRequest

REPO = Path(__file__).resolve().parents[1]


class TimedSlurm:
    """The local adapter, noting when submit is called and how long squeue takes."""

    def __init__(self, inner: LocalSlurm) -> None:
        self.inner = inner
        self.submitted_at: dict[str, float] = {}
        self.squeue_seconds: list[float] = []

    def submit(self, request: SubmitRequest) -> str:
        self.submitted_at[request.service] = time.time()
        return self.inner.submit(request)

    def jobs(self) -> list[SlurmJob]:
        started = time.perf_counter()
        try:
            return self.inner.jobs()
        finally:
            self.squeue_seconds.append(time.perf_counter() - started)

    def cancel(self, slurm_job_id: str) -> None:
        self.inner.cancel(slurm_job_id)


def write_config(folder: Path, **controller: Any) -> Path:
    settings = {
        "sbatch_dir": str(REPO / "sbatch"),
        "job_output_dir": os.environ["SAIA_JOB_OUTPUT_DIR"],
        "job_python": str(REPO / ".venv/bin/python"),
        **controller,
    }
    body = "\n".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"'
                     for k, v in settings.items())
    path = folder / "saia.toml"
    path.write_text(f'placement = "login-node"\n[store]\npath = "saia.db"\n\n[controller]\n{body}\n')
    return path


def wait(check: Any, timeout: float, every: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"bench: timed out after {timeout} s")


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.05):
            return True
    except OSError:
        return False


def cold_starts(folder: Path, trials: int) -> tuple[list[float], list[float]]:
    cfg = config.load(write_config(folder))
    hub = bootstrap.hub_for(cfg)
    controller = bootstrap.controller_for(cfg, hub)
    slurm = TimedSlurm(controller.slurm)  # type: ignore[arg-type]
    controller.slurm = slurm
    stop = threading.Event()
    loop = threading.Thread(target=run, args=(controller, bootstrap.controller_lock(cfg), stop))
    loop.start()
    to_sbatch: list[float] = []
    to_ready: list[float] = []
    try:
        for trial in range(trials):
            name = f"bench-cold-{trial}-{int(time.time())}"
            spec = ServiceSpec.from_dict({"id": name, "sbatch": "testservice.sbatch",
                                          "job_expiry_time": 10, "port_min": 40000,
                                          "port_max": 49999})
            with hub.lock:
                catalog.add(hub, spec, time.time())
                hub.refresh()
            time.sleep(1.0)  # let the loop settle into its idle interval
            waiting_since = time.time()
            controller.demand.started(name, None, waiting_since, waiting=True)
            controller.wake()
            submitted = wait(lambda n=name: slurm.submitted_at.get(n), 30)
            to_sbatch.append(submitted - waiting_since)

            def requested(n: str = name) -> Any:
                with hub.lock:
                    jobs = list(hub.state.services[n].jobs.values())
                return jobs[0] if jobs else None

            # Every dev node is 127.0.0.1: watch the port from the moment it is assigned.
            job = wait(requested, 10)
            listen_at = wait(lambda j=job: listening("127.0.0.1", j.port) and time.time(), 60,
                             0.002)
            ready = wait(lambda j=job: [e for e in events(hub, "saia.Job.BecameReady")
                                        if e.originator_id == j.id], 60, 0.02)
            to_ready.append(ready[0].timestamp.timestamp() - listen_at)
            controller.demand.finished(name, None, time.time(), waiting=True)
            with hub.lock:
                catalog.retire(hub, name, time.time())
    finally:
        stop.set()
        controller.wake()
        loop.join()
        finish(controller)
        hub.close()
    return to_sbatch, to_ready


def events(hub: Any, topic: str) -> list[Any]:
    rows = hub.log.recorder.select_notifications(start=1, limit=1_000_000, topics=[topic])
    return [hub.log.mapper.to_domain_event(row) for row in rows]


def finish(controller: Any) -> None:
    """Retired services drain: run passes until their jobs are cancelled."""
    for _ in range(10):
        controller.tick()
        if not any(v.jobs for v in controller.hub.state.services.values()):
            return
        time.sleep(0.5)


def pass_cost(folder: Path, jobs: int, passes: int, probe_interval: float) -> tuple[
    list[float], list[float]
]:
    cfg = config.load(write_config(folder, probe_interval=probe_interval))
    hub = bootstrap.hub_for(cfg)
    controller = bootstrap.controller_for(cfg, hub)
    slurm = TimedSlurm(controller.slurm)  # type: ignore[arg-type]
    controller.slurm = slurm
    name = f"bench-pass-{int(time.time())}"
    spec = ServiceSpec.from_dict({"id": name, "sbatch": "testservice.sbatch",
                                  "job_expiry_time": 30, "minimum_number_instances": jobs,
                                  "maximum_number_instances": jobs, "port_min": 40000,
                                  "port_max": 49999})
    catalog.add(hub, spec, time.time())
    hub.refresh()
    try:
        deadline = time.monotonic() + 300
        while len(hub.state.services[name].routing_targets()) < jobs:
            if time.monotonic() > deadline:
                raise SystemExit("bench: jobs did not all become ready")
            controller.tick()
            time.sleep(0.5)
        for _ in range(3):
            controller.tick()  # settle: heartbeats due after ready are recorded
        pass_seconds: list[float] = []
        squeue_seconds: list[float] = []
        for _ in range(passes):
            time.sleep(1.0)
            slurm.squeue_seconds.clear()
            started = time.perf_counter()
            report = controller.tick()
            pass_seconds.append(time.perf_counter() - started)
            squeue_seconds.append(slurm.squeue_seconds[0])
            assert not report.actions and not report.errors, report
    finally:
        catalog.retire(hub, name, time.time())
        hub.refresh()
        finish(controller)
        hub.close()
    return pass_seconds, squeue_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    base = REPO / ".dev/bench"
    base.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, bool]] = []
    with tempfile.TemporaryDirectory(dir=base) as folder:
        Path(folder).chmod(0o755)
        cold = Path(folder) / "cold"
        cold.mkdir()
        to_sbatch, to_ready = cold_starts(cold, args.trials)
        med_sbatch, med_ready = statistics.median(to_sbatch), statistics.median(to_ready)
        rows.append(("waiting request -> sbatch called (median)", f"{med_sbatch * 1000:.0f} ms",
                     "< 500 ms", med_sbatch < 0.5))
        rows.append(("service listening -> recorded ready (median)", f"{med_ready * 1000:.0f} ms",
                     "< 1000 ms", med_ready < 1.0))
        for probe_interval, label in ((10.0, "default probe_interval 10 s"),
                                      (0.001, "every job probed every pass")):
            sub = Path(folder) / f"pass-{probe_interval:g}"
            sub.mkdir()
            passes, squeues = pass_cost(sub, args.jobs, args.passes, probe_interval)
            added = statistics.median(p - s for p, s in zip(passes, squeues, strict=True))
            squeue = statistics.median(squeues)
            ratio = added / squeue
            rows.append((f"pass with {args.jobs} jobs, {label}: added / squeue",
                         f"{added * 1000:.1f} ms / {squeue * 1000:.1f} ms = {ratio:.2f}x",
                         "<= 3x" if probe_interval > 1 else "(for comparison)",
                         ratio <= 3.0 or probe_interval <= 1))
    width = max(len(r[0]) for r in rows)
    for what, value, target, ok in rows:
        print(f"{what:<{width}}  {value:>32}  {target:>18}  {'met' if ok else 'MISSED'}")
    print(f"(cold start trials: {args.trials}; to sbatch {[round(x * 1000) for x in to_sbatch]} ms;"
          f" to ready {[round(x * 1000) for x in to_ready]} ms)")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
