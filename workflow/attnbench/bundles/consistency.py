"""Raw-data consistency of a bundle (verify's sixth check): token counts against the workload targets, every
configured level present, failed requests accounted for, and the backend and kernel evidence of each run re-read
from its own files and held against its arm's expectation."""

from __future__ import annotations

from pathlib import Path

from attnbench import safejson
from attnbench.bundles.finding import Finding
from attnbench.bundles.rundata import RunData
from attnbench.engines.backend import check_backend, parse_backend
from attnbench.errors import AttnbenchError


def check_consistency(root: Path, manifest: dict, runs: dict[str, RunData]) -> list[Finding]:
    cfg = manifest["config"]
    workloads = cfg.get("workloads") or {}
    ignore_eos = (cfg.get("sweep") or {}).get("ignore_eos", True)
    device = (cfg.get("engine") or {}).get("device", "cuda")
    findings: list[Finding] = []
    for arm_entry in manifest.get("arms", []):
        arm_cfg = next((a for a in cfg.get("arms", []) if a.get("name") == arm_entry["name"]), {})
        for run in arm_entry.get("runs", []):
            rel = run["path"]
            data = runs[rel]
            requests = [r for _, r in data.requests]
            levels = [lv for _, lv in data.levels]
            findings += _check_tokens(f"{rel}/records.jsonl", requests, workloads, ignore_eos)
            if run.get("status") == "ok":
                findings += _check_levels(rel, requests, levels, workloads)
            findings += _check_backend(rel, run, arm_entry, arm_cfg, root / rel, device)
    return findings


def _check_tokens(rel: str, requests, workloads: dict, ignore_eos: bool) -> list[Finding]:
    out = []
    for n, rec in enumerate(requests, 1):
        wl = workloads.get(rec.workload)
        if rec.phase not in ("measure", "warmup") or not rec.ok or wl is None:
            continue
        where = f"{rec.request_id or 'line ' + str(n)}"
        if rec.prompt_tokens != wl["prompt_tokens"]:
            out.append(Finding(rel, f"{where} prompt_tokens", wl["prompt_tokens"], rec.prompt_tokens))
        want = wl["output_tokens"]
        if (rec.completion_tokens != want) if ignore_eos else not (0 < (rec.completion_tokens or 0) <= want):
            out.append(
                Finding(rel, f"{where} completion_tokens", want if ignore_eos else f"1..{want}", rec.completion_tokens)
            )
    return out


def _check_levels(rel: str, requests, levels, workloads: dict) -> list[Finding]:
    out = []
    by_key = {}
    for lv in levels:
        key = (lv.workload, lv.concurrency)
        if key in by_key:
            out.append(Finding(f"{rel}/levels.jsonl", f"{lv.workload} c{lv.concurrency}", "one line", "duplicate"))
        by_key[key] = lv
    for name, wl in workloads.items():
        for conc in wl.get("concurrency", []):
            lv = by_key.get((name, conc))
            label = f"{name} c{conc}"
            if lv is None:
                out.append(Finding(f"{rel}/levels.jsonl", label, "level present (complete or failed)", "missing"))
                continue
            measured = [r for r in requests if r.phase == "measure" and r.workload == name and r.concurrency == conc]
            failed = sum(1 for r in measured if not r.ok)
            if lv.failed != failed:
                out.append(Finding(f"{rel}/levels.jsonl", f"{label} failed", failed, lv.failed))
            if lv.complete and len(measured) != lv.requests:
                out.append(Finding(f"{rel}/records.jsonl", f"{label} measured requests", lv.requests, len(measured)))
            if not lv.complete and lv.failed == 0:
                out.append(
                    Finding(f"{rel}/levels.jsonl", f"{label} complete", "true, or failed > 0", "false, 0 failed")
                )
    return out


def _check_backend(rel: str, run: dict, arm_entry: dict, arm_cfg: dict, rdir: Path, device: str) -> list[Finding]:
    """Re-read the backend evidence from the bundled server log with the pipeline's own parser and policy
    (backend.parse_backend, backend.check_backend) and hold it against run.json and the arm's expectation."""

    out = []
    if run.get("status") != "ok":
        return out
    log = rdir / "server.log"
    if not log.is_file():
        return [Finding(f"{rel}/server.log", "file", "server log (backend evidence)", "missing")]
    evidence = check_backend(arm_cfg, parse_backend(log.read_text(encoding="utf-8", errors="replace")), device)
    if evidence["logged"] != run.get("logged_backend"):
        out.append(
            Finding(
                f"{rel}/run.json",
                "backend.logged",
                f"{evidence['logged']} (as server.log says)",
                run.get("logged_backend"),
            )
        )
    if not evidence["match"] and not arm_entry.get("allow_backend_mismatch"):
        found = evidence["logged"] or "no backend named"
        if evidence["refused"]:
            found += f", refused {', '.join(evidence['refused'])}"
        out.append(Finding(f"{rel}/server.log", "backend", evidence["expected"], found))
    expect_kernels = arm_cfg.get("expect_kernels") or {}
    if run.get("status") == "ok" and (expect_kernels.get("require") or expect_kernels.get("forbid")):
        from attnbench.engines.kernels import check_expectations  # kernels.py owns the policy

        attribution = safejson.read_json(rdir / "kernels.json")
        if attribution is None:
            out.append(
                Finding(f"{rel}/kernels.json", "file", "kernel attribution (the arm expects kernels)", "missing")
            )
        else:
            try:
                violations = check_expectations(attribution, expect_kernels)
            except AttnbenchError as exc:  # e.g. the config names a family kernels.py does not know
                violations = [str(exc)]
            out += [Finding(f"{rel}/kernels.json", "expect_kernels", expect_kernels, v) for v in violations]
    return out


def allowed_mismatches(manifest: dict) -> list[str]:
    """Runs whose backend did not match the expectation but whose arm opted out: notes, not failures."""
    notes = []
    for arm in manifest.get("arms", []):
        for run in arm.get("runs", []):
            if arm.get("allow_backend_mismatch") and run.get("backend_match") is False:
                notes.append(
                    f"{run['path']}: backend {run.get('logged_backend')} != expected "
                    f"{arm.get('expect_backend')} (allowed by allow_backend_mismatch)"
                )
    return notes
