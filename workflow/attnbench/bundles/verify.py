"""`attnbench verify BUNDLE`: check that a result bundle is intact, internally consistent and reproducible.

Order of checks, each building on the one before (the module doing each in brackets):
1. safe extraction into a fresh folder: only plain files with relative paths inside it (no `..`, no absolute
   paths, no links or devices); a truncated or corrupt archive is an error of its own, exit 2 (extract.py);
2. the manifest against workflow/schemas/bundle.schema.yaml, and its own digest (catches hand edits);
3. every file's SHA-256 and size; no file missing, none extra; each server log the manifest says lost its prompts
   has the original's line count and as many elided lines as recorded (serverlog.py);
4. the run folders read as typed records (rundata.py), and the derived manifest fields (host, engine, arms,
   statuses, missing runs) recomputed from the run.json files (manifest.describe);
5. every derived table recomputed from the raw records with `aggregate.build_tables` and compared exactly, and
   report.md regenerated from them;
6. raw-data consistency: token counts vs workload targets, every configured level present, failed requests
   accounted for, backend and kernel evidence vs each arm's expectation (consistency.py);
7. plausibility: identity, times, counts, GPU identity and decode physics (plausibility.py).
A failure is reported as (file, field, expected, found); PASS only when the list is empty.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from attnbench import safejson
from attnbench.bundles import manifest as manifest_mod
from attnbench.bundles import plausibility, rundata, serverlog, signing
from attnbench.bundles.consistency import allowed_mismatches, check_consistency
from attnbench.bundles.extract import DEFAULT_LIMITS, Limits, safe_extract
from attnbench.bundles.finding import Finding, short
from attnbench.bundles.rundata import RunData
from attnbench.engines.files import sha256_file
from attnbench.errors import BundleError, UnsafeInputError
from attnbench.paths import PACKAGE_DIR, REPO_ROOT
from attnbench.safejson import printable

# attnbench/schemas links to workflow/schemas in a checkout and is a copy (package data) in an installed package.
SCHEMA_PATH = PACKAGE_DIR / "schemas" / "bundle.schema.yaml"


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
    from attnbench.analysis.aggregate import build_tables

    return build_tables


def check_tables(root: Path, manifest: dict, build_tables: Callable | None = None) -> list[Finding]:
    builder = build_tables or _default_build_tables()
    try:
        recomputed = builder(root, manifest["config"])
    except Exception as exc:  # any failure to recompute is a finding, not a crash
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
    import pandas as pd

    rel = "tables/levels.parquet"
    try:
        stored = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
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
                manifest_mod.MANIFEST, field, f"schema: {err.validator} {short(err.validator_value, 80)}", err.message
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
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {manifest_mod.MANIFEST}
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
        digest = sha256_file(path)
        if entry.get("sha256") != digest:
            findings.append(Finding(rel, "sha256", entry.get("sha256"), digest))
    return findings


def check_elided(root: Path, manifest: dict) -> list[Finding]:
    """The logs bundled with prompts elided, against what the manifest recorded of their originals: elision keeps
    every line, and marks the recorded number of them. The original's sha256 and size are sealed facts; only the
    experiment folder can confirm them."""
    findings = []
    for rel, original in (manifest.get("elided") or {}).items():
        if rel not in manifest["files"]:
            findings.append(Finding(rel, "elided", "a bundled server log", "not in the bundle"))
            continue
        if not (root / rel).is_file():
            continue  # check_files names it
        # as bundle.stage reads it: bytes decoded without newline translation (only newlines and markers count)
        text = (root / rel).read_bytes().decode("utf-8", errors="replace")
        for label, key, found in (
            ("lines", "original_lines", serverlog.count_lines(text)),
            ("elided lines", "elided_lines", serverlog.count_marked(text)),
        ):
            if original[key] != found:
                findings.append(Finding(rel, label, f"{original[key]} (manifest: elided.{key})", found))
    return findings


def check_derived_manifest(root: Path, manifest: dict) -> list[Finding]:
    try:
        derived = manifest_mod.describe(root, manifest["config"])
    except BundleError as exc:
        return [Finding(manifest_mod.MANIFEST, "derived fields", "recomputable from run.json files", str(exc))]
    return [
        Finding(manifest_mod.MANIFEST, field, exp, got)
        for field, exp, got in diff_fields(derived, {k: manifest.get(k) for k in derived})
    ]


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
    from attnbench import config

    validator = jsonschema.Draft202012Validator(config.load_schema())
    return [
        Finding(
            manifest_mod.MANIFEST, "config." + config.field_path(list(err.absolute_path)), "valid config", err.message
        )
        for err in validator.iter_errors(manifest["config"])
    ]


def load_runs(root: Path, manifest: dict) -> tuple[dict[str, RunData], list[Finding]]:
    """Every run folder the manifest lists, as typed records. Raises UnsafeInputError (unreadable JSON)."""
    runs, findings = {}, []
    for rel, arm, repeat, status in rundata.runs_of(manifest):
        if rel in runs:
            findings.append(Finding(manifest_mod.MANIFEST, f"arms.{arm}.runs path", "one entry per run folder", rel))
            continue
        runs[rel], problems = rundata.load_run(root, rel, arm, repeat, status)
        findings += problems
    return runs, findings


def verify_extracted(
    root: Path, build_tables: Callable | None = None, *, archive_name: str | None = None
) -> VerifyResult:
    """Checks 2-7 on an already extracted bundle folder; archive_name (the file's name) is held against the
    manifest when given."""
    try:
        manifest = safejson.load_file(root / manifest_mod.MANIFEST, manifest_mod.MANIFEST)
    except FileNotFoundError:
        return VerifyResult([Finding(manifest_mod.MANIFEST, "file", "present", "missing")], [], None, unsafe=True)
    except UnsafeInputError as exc:
        return _unsafe(manifest_mod.MANIFEST, "json", exc)
    findings = check_manifest_schema(manifest) or check_config(manifest)
    if findings:  # the later checks read fields the schema guarantees
        return VerifyResult(findings, [], manifest)
    digest = manifest_mod.manifest_digest(manifest)
    if manifest["manifest_sha256"] != digest:
        findings.append(Finding(manifest_mod.MANIFEST, "manifest_sha256", digest, manifest["manifest_sha256"]))
    for section in manifest_mod.SEALED_BY_VERSION[manifest["bundle_schema"]]:
        sealed = manifest["section_sha256"].get(section)
        if sealed != manifest_mod.section_digest(manifest[section]):
            findings.append(Finding(manifest_mod.MANIFEST, section, f"content with digest {sealed}", "edited"))
    findings += check_files(root, manifest)
    findings += check_elided(root, manifest)
    notes: list[str] = []
    if archive_name is not None:
        name_findings, notes = plausibility.bundle_name_matches(archive_name, manifest_mod.bundle_name(manifest))
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
    from attnbench.analysis import report

    path = root / "report.md"
    if not path.is_file():
        return []
    stored = safejson.read_text(path, "report.md")
    try:
        expected = report.build_report_md(root, manifest["config"])
    except Exception:  # not regenerable here: fall back to the tables it embeds
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
    limits: Limits = DEFAULT_LIMITS,
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
    about = "check a result bundle: checksums, schema, recomputed tables and report, consistency, plausibility"
    p = subparsers.add_parser("verify", help=about, description=f"{about[0].upper()}{about[1:]}.")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle-<gpu-type>-<yyyymmdd>.tar.gz")
    p.add_argument("--extract-to", help="keep the extracted bundle in this (empty) folder")
    p.add_argument("--signature", help="the bundle's SSH signature (default: BUNDLE.sig when present)")
    p.add_argument(
        "--allowed-signers",
        help="ssh-keygen allowed-signers file: a signature by a key not in it, or no signature, fails",
    )
    p.set_defaults(func=_cmd_verify)
