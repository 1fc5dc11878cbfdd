"""``bench/soak.py`` in its short form: three rollouts and a forced rollback under load, zero failed requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_short_soak_serves_every_request_through_three_rollouts_and_a_rollback(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--minutes", "0.25", "--bucket-seconds", "5",
                           "--threads", "2", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [e["kind"] for e in report["events"]] == ["rollout", "rollout", "forced rollback", "rollout"]
    assert all(e["ok"] for e in report["events"])
    rollback = report["events"][2]
    assert rollback["outcome"].startswith(f"rolled back to v{report['versions'][2]}")
    assert report["totals"]["errors"] == 0 and report["totals"]["served_by_broken"] == 0
    assert report["totals"]["requests"] == sum(b["requests"] for b in report["buckets"]) > 0
    assert len(report["buckets"]) >= 3
    assert all(set(b) == {"bucket", "from_s", "requests", "errors", "p50_ms", "p99_ms"} for b in report["buckets"])
    assert all(report["checks"].values()), report["checks"]
    assert "total" in done.stdout and "forced rollback to v5" in done.stdout
