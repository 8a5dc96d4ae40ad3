"""The engine venv build passes pip's lines on as they come (rule engine_venv's log shows progress during a
minutes-long pip install, not one block at the end). Checked with a real Python child that prints a line and then
waits: the line must be in the log while the child is still running."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

# The child prints without flushing (as pip does into a pipe), then waits for the test's go-ahead.
CHILD = """
import pathlib, sys, time
print("Collecting torch (from -r requirements.txt)")
go = pathlib.Path(sys.argv[1])
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("Successfully installed torch")
sys.exit(int(sys.argv[2]))
"""

# What rule engine_venv runs, reduced to the streaming step: attnbench's build helper, stdout into a log file.
PARENT = """
import sys
from attnbench.engines.engine import _run
from attnbench.errors import AttnbenchError
try:
    _run([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]], "pip install -r requirements.txt", stream=True)
except AttnbenchError as exc:
    print(f"error: {exc}")
"""


def build(tmp_path: Path, exit_code: int) -> tuple[str, str]:
    """(log text seen while the child still waited, final log text)."""
    go, log = tmp_path / "go", tmp_path / "engine_venv.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", PARENT, CHILD, str(go), str(exit_code)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while "Collecting" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        early = log.read_text()
        go.touch()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return early, log.read_text()


def test_pip_lines_reach_the_log_while_pip_runs(tmp_path):
    early, final = build(tmp_path, 0)
    assert "Collecting torch" in early and "Successfully installed" not in early
    assert final.splitlines() == ["Collecting torch (from -r requirements.txt)", "Successfully installed torch"]


def test_a_failed_step_still_says_what_failed_with_its_last_lines(tmp_path):
    early, final = build(tmp_path, 3)
    assert "Collecting torch" in early
    (error,) = [line for line in final.splitlines() if line.startswith("error: ")]
    assert error == (
        "error: pip install -r requirements.txt failed (exit 3): "
        "Collecting torch (from -r requirements.txt) | Successfully installed torch"
    )
