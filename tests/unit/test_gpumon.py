"""GPU telemetry during a run (gpumon.py). No GPU here: a TEST STAND-IN `nvidia-smi` on PATH prints lines in the
format a real driver prints for the same query (`--format=csv,noheader,nounits`; the H100 line below has the shape
of driver 580's output), so what is exercised is the real command line, the streaming, the file and the summary."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest

from attnbench.measure import gpumon

H100_BUSY = "0, GPU-5f1c0e2a-0000-4a6b-9c1d-1234567890ab, 1980, 2619, 1980, 512.34, 700.00, 54, 98, 0x0000000000000000"
H100_CAPPED = (
    "0, GPU-5f1c0e2a-0000-4a6b-9c1d-1234567890ab, 1755, 2619, 1980, 699.10, 700.00, 61, 100, 0x0000000000000004"
)
H100_IDLE = "0, GPU-5f1c0e2a-0000-4a6b-9c1d-1234567890ab, 345, 2619, 1980, 71.02, 700.00, 38, 0, 0x0000000000000001"

FAKE = r"""#!/usr/bin/env python3
# TEST STAND-IN for nvidia-smi: answers the query gpumon makes; knows only ACCEPT as the clock-reasons field.
import sys, time
ACCEPT = "{accept}"
LINES = {lines!r}
args = sys.argv[1:]
query = next(a for a in args if a.startswith("--query-gpu=")).split("=", 1)[1]
if not query.endswith(ACCEPT):
    print('Field "%s" is not a valid field to query.' % query.split(",")[-1]); sys.exit(2)
loop = [a for a in args if a.startswith("-lms=")]
if not loop:
    print(LINES[0]); sys.exit(0)
period = int(loop[0].split("=")[1]) / 1000
i = 0
while True:
    print(LINES[i % len(LINES)], flush=True)
    i += 1
    time.sleep(period)
"""


def fake_smi(tmp_path, accept="clocks_event_reasons.active", lines=(H100_BUSY, H100_CAPPED, H100_IDLE)):
    exe = tmp_path / "nvidia-smi"
    exe.write_text(FAKE.format(accept=accept, lines=list(lines)))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def test_parse_real_line_shape():
    sample = gpumon.parse_line(H100_CAPPED, "clocks_event_reasons.active")
    assert sample["index"] == 0
    assert sample["clocks.sm"] == 1755 and sample["power.limit"] == 700.0 and sample["utilization.gpu"] == 100
    assert sample["reasons"] == 0x4
    assert len(sample["gpu"]) == 12 and "5f1c0e2a" not in sample["gpu"]  # hashed, not the UUID itself
    assert gpumon.parse_line("No devices were found", "x") is None
    na = H100_BUSY.replace("512.34", "[N/A]")
    assert gpumon.parse_line(na, "x")["power.draw"] is None


@pytest.mark.parametrize("accept", ["clocks_event_reasons.active", "clocks_throttle_reasons.active"])
def test_monitor_streams_samples_and_stops(tmp_path, accept):
    exe = fake_smi(tmp_path, accept=accept)
    out = tmp_path / "gpu.jsonl"
    with gpumon.GpuMonitor(out, period_ms=50, exe=exe) as mon:
        time.sleep(0.6)
        pid = mon._proc.pid
    assert mon.reason_field == accept
    samples = gpumon.read_samples(out)
    assert len(samples) >= 4
    assert all(s["t"] > 0 for s in samples)
    # The sampler is gone: no nvidia-smi left behind the run.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    summary = gpumon.summarize(out)
    assert summary["busy_samples"] < summary["samples"]  # the idle lines are not busy
    assert summary["sm_clock_mhz_median"] in (1755.0, 1867.5, 1980.0)
    assert summary["power_limit_w"] == 700.0 and summary["temperature_c_max"] == 61
    assert summary["clock_event_reasons"] == "0x4"  # the power cap seen while busy; idle's 0x1 is not counted


def test_monitor_on_a_host_without_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "gpu.jsonl"
    with gpumon.GpuMonitor(out) as mon:
        assert mon.exe is None
    assert not out.exists()
    assert gpumon.summarize(out) is None


def test_monitor_stops_when_the_block_fails(tmp_path):
    exe = fake_smi(tmp_path)
    out = tmp_path / "gpu.jsonl"
    with pytest.raises(RuntimeError):
        with gpumon.GpuMonitor(out, period_ms=50, exe=exe) as mon:
            time.sleep(0.2)
            raise RuntimeError("sweep failed")
    assert mon._proc.poll() is not None
    kept = gpumon.read_samples(out)
    assert kept, "samples taken before the failure are kept"
    # nothing is appended after the block ended
    time.sleep(0.2)
    assert len(gpumon.read_samples(out)) == len(kept)
    assert json.loads(out.read_text().splitlines()[0])["index"] == 0
    assert subprocess.run(["pgrep", "-f", str(exe)], capture_output=True).returncode == 1


def test_nvidia_smi_that_answers_no_query_is_reported(tmp_path, capsys):
    exe = fake_smi(tmp_path, accept="no_such_field")  # like a driver-less host: every query fails
    out = tmp_path / "gpu.jsonl"
    with gpumon.GpuMonitor(out, exe=exe) as mon:
        pass
    assert mon.reason_field is None and not out.exists()
    assert "answers no --query-gpu" in capsys.readouterr().err
