"""The kill harness (tests/reliability/kill_harness.py) at its small budget: train, distill,
generate and designability CLI runs killed with SIGKILL once each and rerun; every check must
pass (resume from the checkpoint on disk, at most one checkpoint interval lost, no half-written
or missing file, no lock or temporary file left, outputs equal to an uninterrupted run)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_kill_harness_small_budget(tmp_path):
    summary = tmp_path / "summary.json"
    r = subprocess.run([sys.executable, "-m", "tests.reliability.kill_harness", "--budget", "small", "--work", str(tmp_path / "w"),
                        "--summary", str(summary)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    s = json.loads(summary.read_text())
    assert r.returncode == 0 and s["ok"], r.stdout + r.stderr
    assert {x["scenario"] for x in s["scenarios"]} == {"train", "distill", "generate", "designability"}
    assert s["kills"] >= 2 and s["files_checked"] > 0
    assert s["files_lost"] == 0 and s["half_written"] == 0 and s["tmp_left"] == 0
    for x in s["scenarios"]:
        assert x["equal_to_reference"] is True, x
        if x["ckpt_every"]:
            assert x["max_lost_steps"] <= x["ckpt_every"], x
