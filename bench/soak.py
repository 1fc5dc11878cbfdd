"""Soak: the local endpoint under steady load for minutes, through three rollouts and a forced rollback.

Starts the local rollout target (one hot-swapping inference server on 127.0.0.1, SQLite registry under a
scratch home) on a champion, then keeps ``--threads`` keep-alive httpx clients posting one row each in a
loop for ``--minutes``. Spread across the run it rolls out three new versions and one broken version whose
warm-up prediction raises: that rollout must fail, put the ``champion`` alias back and leave the live
version serving, as the rollout flow does. Prints requests, errors and p50/p99 latency per bucket
(a minute by default), the events with their times, the totals, and writes the same as JSON.

    .venv/bin/python -m bench.soak [--minutes 10] [--threads 4] [--json soak.json]

Exits 1 if any request failed, a good rollout failed, the broken one went live, or the served versions
are not the expected sequence.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROW = [[round(i / 127, 4) for i in range(64)]]


@dataclass
class Answer:
    """One request: when it finished (seconds since the load started), its latency, status and version."""

    t: float
    latency: float
    status: int
    version: str


@dataclass
class Event:
    """One rollout: when it began and ended, the version, and what happened."""

    t: float
    version: str
    kind: str  # 'rollout' or 'forced rollback'
    took: float = 0.0
    outcome: str = ""
    ok: bool = False


@dataclass
class Load:
    """Threads posting one row in a loop, each answer recorded."""

    url: str
    threads: int
    started: float = field(default_factory=time.perf_counter)
    answers: list[list[Answer]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.answers = [[] for _ in range(self.threads)]
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        self.started = time.perf_counter()
        for worker in self._workers:
            worker.start()

    def now(self) -> float:
        return time.perf_counter() - self.started

    def _run(self, index: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                begin = time.perf_counter()
                try:
                    resp = client.post(f"{self.url}/invocations", json={"inputs": ROW})
                    status, version = resp.status_code, resp.headers.get("x-model-version", "")
                except httpx.HTTPError as exc:
                    status, version = 0, type(exc).__name__
                end = time.perf_counter()
                self.answers[index].append(Answer(end - self.started, end - begin, status, version))

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)


def percentile(sorted_values: list[float], share: float) -> float:
    """Return the nearest-rank percentile of already sorted values (0 if none)."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, max(0, int(len(sorted_values) * share + 0.5) - 1))]


def buckets(answers: list[Answer], seconds: float) -> list[dict[str, float | int]]:
    """Group answers by the bucket they finished in: requests, errors, p50/p99 latency in ms."""
    rows: dict[int, list[Answer]] = {}
    for answer in answers:
        rows.setdefault(int(answer.t // seconds), []).append(answer)
    table = []
    for index in range(max(rows, default=-1) + 1):
        per = rows.get(index, [])
        lat = sorted(a.latency for a in per)
        table.append({"bucket": index, "from_s": index * seconds, "requests": len(per),
                      "errors": sum(a.status != 200 for a in per), "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
                      "p99_ms": round(percentile(lat, 0.99) * 1000, 2)})
    return table


def served_sequence(per_thread: list[list[Answer]]) -> list[list[str]]:
    """Return, per client thread, the versions it was answered by, in order, without repeats."""
    out = []
    for answers in per_thread:
        seen: list[str] = []
        for answer in answers:
            if answer.status == 200 and (not seen or seen[-1] != answer.version):
                seen.append(answer.version)
        out.append(seen)
    return out


def run(minutes: float, threads: int, bucket_s: float, work: Path) -> dict[str, object]:
    """Run the soak in ``work`` and return its report."""
    from mlflow import MlflowClient

    from shipyard import registry
    from shipyard.errors import ServingError
    from shipyard.rollout.base import ModelRef
    from shipyard.rollout.champion import champion_version, restore_champion, set_champion
    from shipyard.rollout.local import LocalTarget
    from shipyard.settings import load_settings
    from tests.servers import free_port
    from tests.serving_models import EXAMPLE, register_broken, register_torch

    os.environ.update({"SHIPYARD_HOME": str(work / "home"), "SHIPYARD_INFERENCE_PORT": str(free_port()),
                       "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # the broken model's class
    settings = load_settings()
    uri = settings.resolved_mlflow_uri()
    client: MlflowClient = registry.client(settings)
    name = "soak"
    champion, *good = [register_torch(uri, name, seed=s) for s in (1, 2, 3, 4)]
    broken = register_broken(uri, name, "raises-on-predict")
    target = LocalTarget(settings)
    set_champion(client, ModelRef(model_name=name, version=champion))
    target.roll_out(ModelRef(model_name=name, version=champion), EXAMPLE.tolist())
    plan = [(good[0], "rollout"), (good[1], "rollout"), (broken, "forced rollback"), (good[2], "rollout")]
    duration = minutes * 60
    load = Load(target.url, threads)
    events: list[Event] = []
    load.start()
    try:
        for i, (version, kind) in enumerate(plan):
            when = duration * (i + 1) / (len(plan) + 1)
            time.sleep(max(0.0, when - load.now()))
            event = Event(round(load.now(), 1), version, kind)
            held = champion_version(client, name)
            model = ModelRef(model_name=name, version=version)
            try:
                set_champion(client, model)
                target.roll_out(model, None)
                event.outcome, event.ok = "live", kind == "rollout"
            except ServingError as exc:
                restore_champion(client, name, held)
                back = champion_version(client, name) == held and target.live() is not None and \
                    target.live().model.version == held  # type: ignore[union-attr]
                event.outcome = f"rolled back to v{held}: {str(exc).splitlines()[0]}"
                event.ok = kind == "forced rollback" and back
            event.took = round(load.now() - event.t, 1)
            events.append(event)
            print(f"t={event.t:7.1f}s  {kind} to v{version}: {event.outcome} ({event.took:.1f} s)", flush=True)
        time.sleep(max(0.0, duration - load.now()))
    finally:
        load.stop()
        target.stop()
    every = [a for per in load.answers for a in per]
    lat = sorted(a.latency for a in every)
    sequences = served_sequence(load.answers)
    expected = [champion, *good]
    totals = {"requests": len(every), "errors": sum(a.status != 200 for a in every),
              "seconds": round(max((a.t for a in every), default=0.0), 1),
              "p50_ms": round(percentile(lat, 0.5) * 1000, 2), "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
              "served_by_broken": sum(a.version == broken for a in every)}
    checks = {"no failed request": totals["errors"] == 0,
              "every event as planned": all(e.ok for e in events) and len(events) == len(plan),
              "each client saw v1..v4 in order, never the broken one": all(s == expected for s in sequences),
              "champion is the last good version": champion_version(client, name) == good[-1]}
    return {"minutes": minutes, "threads": threads, "bucket_seconds": bucket_s, "versions": expected,
            "broken_version": broken, "events": [asdict(e) for e in events], "buckets": buckets(every, bucket_s),
            "totals": totals, "checks": checks, "errors_sample": [asdict(a) for a in every if a.status != 200][:20]}


def render(report: dict[str, object]) -> str:
    """Return the report as the table printed at the end."""
    lines = [f"{'from':>6} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8}"]
    for row in report["buckets"]:  # type: ignore[attr-defined]
        lines.append(f"{row['from_s']:>5.0f}s {row['requests']:>9} {row['errors']:>7} {row['p50_ms']:>8.1f} "
                     f"{row['p99_ms']:>8.1f}")
    t = report["totals"]
    lines.append(f"{'total':>6} {t['requests']:>9} {t['errors']:>7} {t['p50_ms']:>8.1f} {t['p99_ms']:>8.1f}"  # type: ignore[index]
                 f"   over {t['seconds']} s")  # type: ignore[index]
    for event in report["events"]:  # type: ignore[attr-defined]
        lines.append(f"event t={event['t']}s: {event['kind']} to v{event['version']} -> {event['outcome']} "
                     f"({event['took']} s)")
    for check, ok in report["checks"].items():  # type: ignore[attr-defined]
        lines.append(f"{'ok  ' if ok else 'FAIL'} {check}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    parser.add_argument("--threads", type=int, default=4, help="client threads posting in a loop")
    parser.add_argument("--bucket-seconds", type=float, default=60.0, help="width of each row of the table")
    parser.add_argument("--json", type=Path, default=None, help="write the report here as JSON too")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.threads < 1 or args.bucket_seconds <= 0:
        parser.error("--minutes and --bucket-seconds must be positive, --threads at least 1")
    work = Path(tempfile.mkdtemp(prefix="shipyard-soak-"))
    try:
        report = run(args.minutes, args.threads, args.bucket_seconds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(report["checks"].values()) else 1  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
