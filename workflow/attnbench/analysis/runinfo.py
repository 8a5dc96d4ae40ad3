"""The run folders of one experiment as the analysis sees them: which the config names, which hold raw records,
what each says about itself (status, backend, kernel attribution) and why it is flagged. Loaded once per command
(`load_runs`) and handed to whatever needs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench import safejson
from attnbench.engines import kernels as kernels_mod
from attnbench.errors import AttnbenchError
from attnbench.layout import has_raw_records, run_dir


class AggregateError(AttnbenchError):
    """The tables of an experiment cannot be built from its folder (no records, a damaged file, a bad config pair)."""


@dataclass
class RunInfo:
    """One run folder (arm, repeat) and what it says about itself besides its measurements."""

    arm: str
    repeat: int
    run_dir: Path
    run: dict  # run.json ({} while the run has not finished)
    kernels: dict | None  # kernels.json (None when no probe ran)
    flags: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.run.get("status") or "unfinished"

    @property
    def logged_backend(self) -> str | None:
        return (self.run.get("backend") or {}).get("logged")

    @property
    def backend_match(self) -> bool | None:
        return (self.run.get("backend") or {}).get("match")


def arms_of(cfg: dict) -> list[dict]:
    return list(cfg["arms"])


def baseline_of(cfg: dict) -> str:
    return cfg.get("baseline") or cfg["arms"][0]["name"]


def workload_names(cfg: dict) -> list[str]:
    return list(cfg["workloads"])


def kernel_violations(kernels: dict | None, arm: dict) -> list[str]:
    """The arm's kernel expectation checked against a run's attribution (kernels.py owns the policy)."""
    expect = arm.get("expect_kernels") or {}
    if kernels is None or not (expect.get("require") or expect.get("forbid")):
        return []
    return list(kernels_mod.check_expectations(kernels, expect))


def load_runs(exp_dir: Path, cfg: dict) -> list[RunInfo]:
    """Every run folder the config names that holds raw records, in config order (arm, then repeat)."""
    runs = []
    for arm in arms_of(cfg):
        for repeat in range(int(cfg.get("sweep", {}).get("repeats", 1))):
            rdir = run_dir(exp_dir, arm["name"], repeat)
            if not has_raw_records(rdir):
                continue
            run = safejson.read_json(rdir / "run.json") or {}
            kern = safejson.read_json(rdir / "kernels.json")
            info = RunInfo(arm["name"], repeat, rdir, run, kern)
            if info.status != "ok":
                info.flags.append(f"run {info.status}" + (f": {run['error']}" if run.get("error") else ""))
            info.flags.extend(f"kernels: {v}" for v in kernel_violations(kern, arm))
            runs.append(info)
    return runs


def missing_runs(exp_dir: Path, cfg: dict) -> list[str]:
    return [
        f"{arm['name']}/rep{k}"
        for arm in arms_of(cfg)
        for k in range(int(cfg.get("sweep", {}).get("repeats", 1)))
        if not has_raw_records(run_dir(exp_dir, arm["name"], k))
    ]


def families_summary(families: dict | None) -> str:
    """'fa3 91.2%, paged_attention 8.8%': attention families by their share of attention time (kernels.json's
    `attention_share`), largest first, name breaking ties. Without attention shares (an older or hand-written
    attribution) every family is listed with its share of all time."""
    if not families:
        return ""
    entries = {name: v if isinstance(v, dict) else {"share": v} for name, v in families.items()}
    if any("attention_share" in v for v in entries.values()):
        items = [(n, v.get("attention_share")) for n, v in entries.items() if v.get("attention_share") is not None]
    else:
        items = [(n, v.get("share")) for n, v in entries.items()]
    items.sort(key=lambda kv: (-(kv[1] or 0.0), kv[0]))
    return ", ".join(name if share is None else f"{name} {100 * share:.1f}%" for name, share in items)


def phases_summary(phases: Any) -> str:
    """'prefill: pytorch_flash 100.0%; decode: paged_attention 100.0%' from kernels.json's phase split (phases
    without attention kernels, such as idle time, are left out)."""
    if not isinstance(phases, dict) or not phases:
        return ""
    parts = []
    for phase in sorted(phases, key=lambda p: (p != "prefill", p != "decode", p)):
        body = phases[phase]
        if isinstance(body, dict) and isinstance(body.get("families"), dict):
            body = body["families"]
        text = families_summary(body) if isinstance(body, dict) else ""
        if text:
            parts.append(f"{phase}: {text}")
    return "; ".join(parts)


def attention_share_text(kernels: dict | None) -> str:
    share = (kernels or {}).get("attention_share")
    return f"{100 * share:.1f}%" if isinstance(share, (int, float)) else "n/a"


def expectation_word(info: RunInfo, arm: dict) -> str:
    expect = arm.get("expect_kernels") or {}
    if not (expect.get("require") or expect.get("forbid")):
        return "none"
    if info.kernels is None:
        return "unchecked"
    return "violated" if any(f.startswith("kernels:") for f in info.flags) else "ok"
