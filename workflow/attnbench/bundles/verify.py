"""`attnbench verify BUNDLE`: check that a result bundle is intact, internally consistent and reproducible.

Order of checks, each building on the one before:
1. safe extraction into a fresh folder: only plain files with relative paths inside it (no `..`, no absolute
   paths, no links or devices); a truncated or corrupt archive is an error of its own (exit 2);
2. the manifest against workflow/schemas/bundle.schema.yaml, and its own digest (catches hand edits);
3. every file's SHA-256 and size; no file missing, none extra;
4. the derived manifest fields (host, engine, arms, statuses, missing runs) recomputed from the run.json files;
5. every derived table recomputed from the raw records with `aggregate.build_tables` and compared exactly;
6. raw-data consistency: token counts vs workload targets, every configured level present, failed requests
   accounted for, backend and kernel evidence vs each arm's expectation.
A failure is reported as (file, field, expected, found); PASS only when the list is empty.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import jsonschema
import yaml

from attnbench import safejson
from attnbench.analysis.finding import Finding, short
from attnbench.bundles import bundle as bundle_mod
from attnbench.bundles import plausibility, signing
from attnbench.bundles.plausibility import RunData
from attnbench.errors import AttnbenchError, BundleError, UnsafeInputError
from attnbench.paths import PACKAGE_DIR, REPO_ROOT
from attnbench.safejson import printable

# attnbench/schemas links to workflow/schemas in a checkout and is a copy (package data) in an installed package.
SCHEMA_PATH = PACKAGE_DIR / "schemas" / "bundle.schema.yaml"


# --- safe extraction --------------------------------------------------------------------------------------------


def unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why a member must not be extracted, or None when it is a plain file with a clean relative path."""
    name = member.name
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "device, fifo or other special file"
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        return "path escapes the target folder (..)"
    if any(p in ("", ".") for p in name.replace("\\", "/").split("/")[:-1]) or "\x00" in name:
        return "unclean path"
    return None


def _corrupt(path: Path, exc: BaseException) -> BundleError:
    return BundleError(f"{path}: truncated or corrupt archive ({type(exc).__name__}: {exc})")


class _OneGzipStream(io.RawIOBase):
    """The decompressed bytes of a file that must hold exactly one gzip stream and nothing after it, counted as
    they stream: reading past `limit` decompressed bytes raises, so a gzip bomb never reaches the disk or memory,
    and bytes after the stream's end (which tarfile and gzip would ignore) are an error, not a hiding place."""

    def __init__(self, raw, name: str, limit: int):
        self._raw, self._name, self._limit = raw, name, limit
        self._z = zlib.decompressobj(wbits=31)  # gzip header and trailer checked by zlib (CRC, length)
        self._buf = b""
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf and not self._z.eof:
            chunk = self._raw.read(1 << 16)
            if not chunk:
                raise UnsafeInputError(f"{self._name}: truncated or corrupt archive (the gzip stream ends early)")
            self._buf = self._z.decompress(chunk, 1 << 20)
            while self._z.unconsumed_tail and len(self._buf) < (1 << 20):
                self._buf += self._z.decompress(self._z.unconsumed_tail, 1 << 20)
            self._take_tail_if_done()
            self.total += len(self._buf)
            if self.total > self._limit:
                raise UnsafeInputError(f"{self._name}: expands beyond {self._limit} bytes (limit)")
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _take_tail_if_done(self) -> None:
        if self._z.eof and (self._z.unused_data or self._raw.read(1)):
            raise UnsafeInputError(f"{self._name}: data after the end of the gzip stream")

    def drain(self) -> None:
        """Read to the end of the stream, so that trailing data is found even after the tar end marker."""
        while self.read(1 << 20):
            pass


@dataclass(frozen=True)
class Limits:
    """What a bundle may hold before verify refuses to read further (a bundle of ours is a few MB)."""

    total_bytes: int = 2 << 30
    member_bytes: int = 1 << 30
    members: int = 20000


def _scan(archive: Path, limits: Limits, extract_to: Path | None) -> list[Finding]:
    """One streaming pass over the archive: with extract_to None it only checks members and limits; otherwise it
    writes each (already checked) member below extract_to."""
    findings: list[Finding] = []
    seen: set[str] = set()
    with archive.open("rb") as raw:
        stream = _OneGzipStream(raw, str(archive), limits.total_bytes)
        with tarfile.open(fileobj=io.BufferedReader(stream, 1 << 16), mode="r|") as tar:
            for count, member in enumerate(tar, 1):
                if count > limits.members:
                    raise UnsafeInputError(f"{archive}: more than {limits.members} members (limit)")
                if member.size > limits.member_bytes:
                    raise UnsafeInputError(
                        f"{archive}: member {printable(member.name)} has {member.size} bytes "
                        f"(limit {limits.member_bytes})"
                    )
                reason = unsafe_reason(member)
                if reason is None and member.isfile() and member.name in seen:
                    reason = "duplicate member"
                seen.add(member.name)
                if reason:
                    findings.append(
                        Finding(member.name, "member", "plain file with a relative path inside the bundle", reason)
                    )
                if extract_to is None or member.isdir() or reason:
                    continue
                dest = (extract_to / member.name).resolve()
                if extract_to not in dest.parents:  # belt and braces after unsafe_reason
                    raise UnsafeInputError(f"{archive}: member {printable(member.name)} resolves outside the folder")
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                with open(dest, "xb") as out:  # "x": never follow or overwrite something already there
                    while block := src.read(1 << 20):
                        out.write(block)
                if dest.stat().st_size != member.size:
                    raise UnsafeInputError(f"{archive}: member {printable(member.name)} is truncated")
        stream.drain()
    return findings


def safe_extract(archive: Path, target: Path, limits: Limits = Limits()) -> list[Finding]:
    """Extract a bundle into target (an empty folder). Returns findings for unsafe members; when there are any,
    nothing at all is extracted (a first pass reads the whole archive without writing). Raises UnsafeInputError
    (a BundleError) when the archive cannot be read to its end, breaks a limit or has data after its end."""
    archive, target = Path(archive), Path(target).resolve()
    try:
        unsafe = _scan(archive, limits, None)
        if unsafe:
            return unsafe
        _scan(archive, limits, target)
    except FileNotFoundError:
        raise BundleError(f"{archive}: no such file") from None
    except UnsafeInputError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise _corrupt(archive, exc) from None
    return []


# --- table comparison -------------------------------------------------------------------------------------------


def first_difference(name: str, expected: str, found: str) -> Finding:
    """Name the first line (and, for CSV, the column and row key) where a stored table differs from the
    recomputed one."""
    exp_lines, got_lines = expected.splitlines(), found.splitlines()
    if name.endswith(".csv"):
        exp_rows, got_rows = list(csv.reader(io.StringIO(expected))), list(csv.reader(io.StringIO(found)))
        header = exp_rows[0] if exp_rows else []
        for i, (e, g) in enumerate(zip(exp_rows, got_rows)):
            if e != g:
                for j in range(max(len(e), len(g))):
                    ev, gv = (e[j] if j < len(e) else None), (g[j] if j < len(g) else None)
                    if ev != gv:
                        column = header[j] if i > 0 and j < len(header) else f"column {j + 1}"
                        key = ",".join(e[: min(5, len(e))]) if i > 0 else "header"
                        return Finding(name, f"line {i + 1} ({key}) {column}", ev, gv)
        return Finding(name, "rows", f"{len(exp_rows)} rows", f"{len(got_rows)} rows")
    for i, (e, g) in enumerate(zip(exp_lines, got_lines)):
        if e != g:
            return Finding(name, f"line {i + 1}", e, g)
    if len(exp_lines) != len(got_lines):
        return Finding(name, "lines", f"{len(exp_lines)} lines", f"{len(got_lines)} lines")
    return Finding(name, "bytes", "identical text", "differs in line endings or trailing newline")


def _default_build_tables() -> Callable[[Path, dict], dict[str, str]]:
    from attnbench.analysis.aggregate import build_tables  # noqa: PLC0415

    return build_tables


def check_tables(root: Path, manifest: dict, build_tables: Callable | None = None) -> list[Finding]:
    builder = build_tables or _default_build_tables()
    try:
        recomputed = builder(root, manifest["config"])
    except Exception as exc:  # noqa: BLE001  (any failure to recompute is a finding, not a crash)
        return [Finding("tables/", "recompute", "tables rebuilt from raw records", f"{type(exc).__name__}: {exc}")]
    findings = []
    for name, text in sorted(recomputed.items()):
        rel = name if "/" in name else f"tables/{name}"
        path = root / rel
        if not path.is_file():
            findings.append(Finding(rel, "file", "present (recomputable from raw records)", "missing"))
            continue
        stored = path.read_text(encoding="utf-8")
        if stored != text:
            findings.append(first_difference(rel, text, stored))
    if "levels.csv" in recomputed and (root / "tables/levels.parquet").is_file():
        findings += _check_parquet(root / "tables/levels.parquet", recomputed["levels.csv"])
    return findings


def _check_parquet(path: Path, csv_text: str) -> list[Finding]:
    """levels.parquet holds the rows of levels.csv (aggregate writes it from the CSV text); Parquet bytes depend on
    the pyarrow build, so compare values, not bytes."""
    import pandas as pd  # noqa: PLC0415

    rel = "tables/levels.parquet"
    try:
        stored = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001  (pyarrow raises several types for a damaged file)
        return [Finding(rel, "parquet", "readable Parquet", f"{type(exc).__name__}: {exc}")]
    expected = pd.read_csv(io.StringIO(csv_text))
    if list(stored.columns) != list(expected.columns) or len(stored) != len(expected):
        return [
            Finding(
                rel,
                "shape",
                f"{len(expected)} rows x {list(expected.columns)}",
                f"{len(stored)} rows x {list(stored.columns)}",
            )
        ]
    for col in expected.columns:
        for i, (e, g) in enumerate(zip(expected[col], stored[col])):
            if not (e == g or (pd.isna(e) and pd.isna(g))):
                return [Finding(rel, f"row {i + 1} {col}", e, g)]
    return []


# --- manifest ---------------------------------------------------------------------------------------------------


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def check_manifest_schema(manifest: dict) -> list[Finding]:
    validator = jsonschema.Draft202012Validator(load_schema())
    out = []
    for err in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path)):
        field = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        out.append(
            Finding(
                bundle_mod.MANIFEST, field, f"schema: {err.validator} {short(err.validator_value, 80)}", err.message
            )
        )
    return out


def diff_fields(expected, found, path: str = "") -> list[tuple[str, object, object]]:
    """Leaf-level differences between two JSON values, as (dotted path, expected, found)."""
    if isinstance(expected, dict) and isinstance(found, dict):
        out = []
        for key in sorted(set(expected) | set(found), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in found:
                out.append((sub, expected[key], "(absent)"))
            elif key not in expected:
                out.append((sub, "(absent)", found[key]))
            else:
                out += diff_fields(expected[key], found[key], sub)
        return out
    if isinstance(expected, list) and isinstance(found, list) and len(expected) == len(found):
        out = []
        for i, (e, f) in enumerate(zip(expected, found)):
            label = e.get("name") if isinstance(e, dict) and "name" in e else i
            out += diff_fields(e, f, f"{path}[{label}]")
        return out
    return [] if expected == found else [(path, expected, found)]


def check_files(root: Path, manifest: dict) -> list[Finding]:
    listed = manifest.get("files") or {}
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {bundle_mod.MANIFEST}
    findings = [
        Finding(rel, "file", "listed in manifest and present", "missing") for rel in sorted(set(listed) - present)
    ]
    findings += [
        Finding(rel, "file", "not in the bundle (unlisted in manifest)", "extra file")
        for rel in sorted(present - set(listed))
    ]
    for rel in sorted(set(listed) & present):
        entry, path = listed[rel], root / rel
        size = path.stat().st_size
        if entry.get("bytes") != size:
            findings.append(Finding(rel, "bytes", entry.get("bytes"), size))
        digest = bundle_mod.sha256_file(path)
        if entry.get("sha256") != digest:
            findings.append(Finding(rel, "sha256", entry.get("sha256"), digest))
    return findings


def check_derived_manifest(root: Path, manifest: dict) -> list[Finding]:
    try:
        derived = bundle_mod.describe(root, manifest["config"])
    except BundleError as exc:
        return [Finding(bundle_mod.MANIFEST, "derived fields", "recomputable from run.json files", str(exc))]
    return [
        Finding(bundle_mod.MANIFEST, field, exp, got)
        for field, exp, got in diff_fields(derived, {k: manifest.get(k) for k in derived})
    ]


# --- raw-data consistency ---------------------------------------------------------------------------------------


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
    (server.parse_backend, runarm.check_backend) and hold it against run.json and the arm's expectation."""
    from attnbench.engines.backend import check_backend  # noqa: PLC0415
    from attnbench.engines.server import parse_backend  # noqa: PLC0415

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
        from attnbench.engines.kernels import check_expectations  # noqa: PLC0415  (kernels.py owns the policy)

        attribution = bundle_mod._load_json(rdir / "kernels.json")
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


# --- entry points -----------------------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    findings: list[Finding]
    notes: list[str]
    manifest: dict | None
    unsafe: bool = False  # unreadable or unsafe input: nothing past the failing step was checked
    signature: signing.Signature | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 2 if self.unsafe else 1


def _unsafe(file: str, what: str, exc: BaseException) -> VerifyResult:
    return VerifyResult([Finding(file, what, "safe, readable input", str(exc))], [], None, unsafe=True)


def check_config(manifest: dict) -> list[Finding]:
    """The bundled config must be a valid experiment config: every later check reads it."""
    from attnbench import config  # noqa: PLC0415

    validator = jsonschema.Draft202012Validator(config.load_schema())
    return [
        Finding(
            bundle_mod.MANIFEST, "config." + config.field_path(list(err.absolute_path)), "valid config", err.message
        )
        for err in validator.iter_errors(manifest["config"])
    ]


def load_runs(root: Path, manifest: dict) -> tuple[dict[str, RunData], list[Finding]]:
    """Every run folder the manifest lists, as typed records. Raises UnsafeInputError (unreadable JSON)."""
    runs, findings = {}, []
    for rel, arm, repeat, status in plausibility.runs_of(manifest):
        if rel in runs:
            findings.append(Finding(bundle_mod.MANIFEST, f"arms.{arm}.runs path", "one entry per run folder", rel))
            continue
        runs[rel], problems = plausibility.load_run(root, rel, arm, repeat, status)
        findings += problems
    return runs, findings


def verify_extracted(
    root: Path, build_tables: Callable | None = None, *, archive_name: str | None = None
) -> VerifyResult:
    """Checks 2-7 on an already extracted bundle folder; archive_name (the file's name) is held against the
    manifest when given."""
    try:
        manifest = safejson.load_file(root / bundle_mod.MANIFEST, bundle_mod.MANIFEST)
    except FileNotFoundError:
        return VerifyResult([Finding(bundle_mod.MANIFEST, "file", "present", "missing")], [], None, unsafe=True)
    except UnsafeInputError as exc:
        return _unsafe(bundle_mod.MANIFEST, "json", exc)
    findings = check_manifest_schema(manifest) or check_config(manifest)
    if findings:  # the later checks read fields the schema guarantees
        return VerifyResult(findings, [], manifest)
    digest = bundle_mod.manifest_digest(manifest)
    if manifest["manifest_sha256"] != digest:
        findings.append(Finding(bundle_mod.MANIFEST, "manifest_sha256", digest, manifest["manifest_sha256"]))
    for section in bundle_mod.SEALED_SECTIONS:
        sealed = manifest["section_sha256"].get(section)
        if sealed != bundle_mod.section_digest(manifest[section]):
            findings.append(Finding(bundle_mod.MANIFEST, section, f"content with digest {sealed}", "edited"))
    findings += check_files(root, manifest)
    notes: list[str] = []
    if archive_name is not None:
        name_findings, notes = plausibility.bundle_name_matches(archive_name, bundle_mod.bundle_name(manifest))
        findings += name_findings
    try:
        runs, type_findings = load_runs(root, manifest)
    except UnsafeInputError as exc:
        return VerifyResult(
            findings + [Finding("runs/", "json", "safe, readable input", str(exc))], [], manifest, unsafe=True
        )
    except OSError as exc:  # a run path that names a folder, not a file, and the like
        return VerifyResult(
            findings + [Finding("runs/", "files", "readable run files", str(exc))], [], manifest, unsafe=True
        )
    if type_findings:  # later checks compute with these values
        return VerifyResult(findings + type_findings, [], manifest)
    findings += check_derived_manifest(root, manifest)
    findings += check_tables(root, manifest, build_tables)
    findings += check_consistency(root, manifest, runs)
    search = [Path.cwd(), REPO_ROOT]
    plausible, physics_notes = plausibility.check_runs(list(runs.values()), manifest, search)
    findings += plausible
    findings += check_report(root, manifest)
    return VerifyResult(findings, notes + physics_notes + allowed_mismatches(manifest), manifest)


def check_report(root: Path, manifest: dict) -> list[Finding]:
    """report.md regenerated from the bundle (tables, run files, config) must equal the bundled one. Where the
    report cannot be regenerated here (a section reads a file outside the bundle, such as analysis.reference),
    each derived table it embeds must still appear in it exactly as the bundle's tables/ has it."""
    from attnbench.analysis import report  # noqa: PLC0415

    path = root / "report.md"
    if not path.is_file():
        return []
    stored = safejson.read_text(path, "report.md")
    try:
        expected = report.build_report_md(root, manifest["config"])
    except Exception:  # noqa: BLE001  (not regenerable here: fall back to the tables it embeds)
        expected = None
    if expected is not None:
        return [] if stored == expected else [first_difference("report.md", expected, stored)]
    out = []
    for table in sorted((root / "tables").glob("*.md")):
        text = safejson.read_text(table, f"tables/{table.name}")
        section = report._shift_headings(text, 2 if table.name.startswith("article_") else 1)
        if text.strip() and section not in stored:
            first = next((ln for ln in section.splitlines() if ln.strip() and ln not in stored), "(order or spacing)")
            out.append(Finding("report.md", f"section from tables/{table.name}", first, "absent or edited"))
    return out


def verify_bundle(
    archive: Path,
    *,
    workdir: Path | None = None,
    build_tables: Callable | None = None,
    limits: Limits = Limits(),
    signature: Path | None = None,
    allowed_signers: Path | None = None,
) -> VerifyResult:
    """Verify a bundle file and its signature (<archive>.sig unless `signature` names another file).
    Extracts into workdir (kept, for inspection) or a temporary folder (removed). An unreadable or unsafe archive
    gives a result with unsafe=True (exit 2); a bad signature, or a key outside a given allowed-signers file, is a
    finding (exit 1). Raises BundleError only for a file that cannot be opened at all."""
    archive = Path(archive)
    if not archive.is_file():
        raise BundleError(f"{archive}: no such file")
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise BundleError(f"{workdir}: extraction folder must be empty")
        result = _verify_into(archive, workdir, build_tables, limits)
    else:
        with tempfile.TemporaryDirectory(prefix="attnbench-verify-") as tmp:
            result = _verify_into(archive, Path(tmp), build_tables, limits)
    sig = signing.check(archive, signature, allowed_signers)
    result.signature = sig
    where = (signature or signing.signature_path(archive)).name
    if sig.state == "bad":
        result.findings.append(
            Finding(where, "signature", "a good Ed25519 signature of the archive's bytes", sig.detail)
        )
    elif sig.state == "good" and sig.trusted is False:
        result.findings.append(Finding(where, "signer", f"a key in {allowed_signers}", sig.fingerprint))
    elif sig.state == "unsigned" and allowed_signers is not None:
        result.findings.append(Finding(where, "signature", f"signed by a key in {allowed_signers}", "unsigned"))
    return result


def _verify_into(archive: Path, root: Path, build_tables: Callable | None, limits: Limits) -> VerifyResult:
    unsafe = safe_extract(archive, root, limits)
    if unsafe:
        return VerifyResult(unsafe, ["nothing was extracted: the archive has unsafe members"], None, unsafe=True)
    return verify_extracted(root, build_tables, archive_name=archive.name)


def report_result(name: str, result: VerifyResult) -> int:
    """Print PASS or the findings, one per line; the exit status (0 pass, 1 tampered or inconsistent,
    2 unreadable or unsafe)."""
    for note in result.notes:
        print(f"note: {printable(note, 400)}")
    if result.signature is not None:
        print(f"signature: {printable(result.signature.describe(), 400)}")
    if result.ok:
        print(f"PASS {printable(name)}")
        return 0
    verdict = "UNSAFE" if result.unsafe else "FAIL"
    print(f"{verdict} {printable(name)}: {len(result.findings)} problem(s)")
    for finding in result.findings:
        print(f"  {finding}")
    return result.exit_code


def _cmd_verify(args: argparse.Namespace) -> int:
    try:
        result = verify_bundle(
            Path(args.bundle),
            workdir=Path(args.extract_to) if args.extract_to else None,
            signature=Path(args.signature) if args.signature else None,
            allowed_signers=Path(args.allowed_signers) if args.allowed_signers else None,
        )
    except BundleError as exc:
        print(f"attnbench: {printable(str(exc), 400)}", file=sys.stderr)
        if Path(args.bundle).is_file():  # say too whether the unreadable bytes are the ones that were signed
            try:
                sig = signing.check(Path(args.bundle), Path(args.signature) if args.signature else None)
                print(f"signature: {printable(sig.describe(), 400)}")
            except BundleError:
                pass
        return 2
    return report_result(args.bundle, result)


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="check a result bundle: checksums, schema, recomputed tables, consistency")
    p.add_argument("bundle", help="bundle-<gpu-type>-<yyyymmdd>.tar.gz")
    p.add_argument("--extract-to", help="keep the extracted bundle in this (empty) folder")
    p.add_argument("--signature", help="the bundle's SSH signature (default: BUNDLE.sig when present)")
    p.add_argument(
        "--allowed-signers",
        help="ssh-keygen allowed-signers file: a signature by a key not in it, or no signature, fails",
    )
    p.set_defaults(func=_cmd_verify)
