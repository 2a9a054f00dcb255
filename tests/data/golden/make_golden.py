"""Writes golden.jsonl: a small deterministic history, as stored events.

Run from the repository root: ``.venv/bin/python tests/data/golden/make_golden.py``.
Each line is one stored event (originator id, version, topic, state as base64) in
notification order, so the file is reviewable and loads into any fresh store.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import NAMESPACE_URL, uuid5

from eventsourcing.domain import Aggregate

from saia.adapters.store import EventLog, MemoryStore
from saia.domain.job import DrainReason, FinalState, Job
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec

T0 = datetime(2026, 10, 31, 22, 30, 0, tzinfo=UTC)
HERE = Path(__file__).parent


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def history(log: EventLog) -> None:
    chat = Service.register(ServiceSpec.from_dict(
        {"id": "chat", "sbatch": "vllm.sbatch", "maximum_number_instances": 2}), at(0))
    embed = Service.register(ServiceSpec.from_dict({"id": "embed", "sbatch": "e.sbatch"}), at(1))
    log.save(chat, embed)
    jobs = []
    for n, (service, start, end) in enumerate(
        [("chat", 10, 5000), ("chat", 600, 3000), ("embed", 20, None)]
    ):
        job = Job.request(service, 20000 + n, f"tok{n}", 3600.0, at(start), reason="demand")
        job.submitted(str(100 + n), at(start + 1))
        job.started(f"node{n}", at(start + 30))
        job.became_ready(at(start + 90))
        job.heartbeat(True, 0.01, at(start + 200))
        if end is not None:
            job.drain(DrainReason.SURPLUS, at(end - 10))
            job.end(FinalState.CANCELLED, at(end))
        jobs.append(job)
    log.save(*jobs)
    users = ("alice", "bob", "carol")
    requests: list[Aggregate] = []
    for n in range(60):
        service = "embed" if n % 5 == 0 else "chat"
        request = Request.start(uuid5(NAMESPACE_URL, f"golden/{n}"), users[n % 3], service,
                                "tok0", 100 + n, at(100 + 120 * n))
        if n % 7 == 3:
            request.reject(429, "busy", at(100 + 120 * n + 0.5))
        else:
            status = 500 if n % 11 == 4 else 200
            request.finish(status, "tok0", 1000, 10 + n, 2 * n, at(100 + 120 * n + 1.5 + n % 4))
        requests.append(request)
    log.save(*requests)
    chat.reconfigure({"maximum_number_instances": 3}, at(7300))
    embed.retire(at(7400))
    log.save(chat, embed)


def main() -> None:
    log = EventLog(MemoryStore())
    history(log)
    lines = [
        json.dumps({"originator_id": str(n.originator_id), "version": n.originator_version,
                    "topic": n.topic, "state": base64.b64encode(n.state).decode()})
        for n in log.recorder.select_notifications(start=0, limit=100_000)
    ]
    (HERE / "golden.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
