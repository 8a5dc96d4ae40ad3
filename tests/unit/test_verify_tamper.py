"""The tamper corpus: each case is its own copy of a clean bundle, edited the way a hostile peer would and resealed
as carefully as the forger can (tables, report, derived manifest fields, checksums and digests recomputed), then
verified. Every case must be caught by a finding that names the file and the record or field, with the exit status
of its class (1 tampered or inconsistent, 2 unreadable or unsafe), and none may raise."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from bundlefixture import KEY_ENV, SECRET, make_experiment
from tamper import append_bytes, edit_config, edit_json, edit_jsonl, extract, gzip_bytes, pack, reseal

from attnbench.bundles import bundle, verify
from attnbench.cli import main

FAST0 = "runs/fast/rep0"
REC = f"{FAST0}/records.jsonl"
LEV = f"{FAST0}/levels.jsonl"
RUN = f"{FAST0}/run.json"
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_cap": "9.0", "memory_mib": 81559, "index": 0}
H100_TYPE = "h100-80gb-hbm3-sm90-80g"


@dataclass
class Case:
    name: str
    edit: Callable[[Path], None]
    file: str  # the finding must name this file (substring of its text)
    field: str  # ... and this record or field
    code: int = 1
    base: str = "cpu"  # "gpu": the bundle relabelled as a consistent H100 run first
    reseal: bool = True
    tables: bool = True
    derived: bool = True  # False: a forger who leaves the manifest's run summaries alone (its schema would object)
    archive: Callable[[Path], None] | None = None  # edits of the archive file itself, after packing


def _rec(i: int, **changes) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        edit_jsonl(root / REC, lambda lines: lines[i].update(changes))

    return edit


def _rec_fn(fn: Callable[[dict], None], i: int = 1) -> Callable[[Path], None]:
    return lambda root: edit_jsonl(root / REC, lambda lines: fn(lines[i]))


def _lev(i: int, **changes) -> Callable[[Path], None]:
    return lambda root: edit_jsonl(root / LEV, lambda lines: lines[i].update(changes))


def _run(fn: Callable[[dict], None], rel: str = RUN) -> Callable[[Path], None]:
    return lambda root: edit_json(root / rel, fn)


def _raw_line(rel: str, i: int, text: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        lines = (root / rel).read_text().splitlines(keepends=True)
        lines[i] = text + "\n"
        (root / rel).write_text("".join(lines))

    return edit


def _shift(rec: dict, by: float) -> None:
    rec["start"] += by
    rec["end"] += by


def _faster(root: Path) -> None:
    """Decode at 1 ms per token, 4x faster than an H100 can read 7B fp16 weights: every record of every run."""
    for path in root.glob("runs/*/rep*/records.jsonl"):

        def edit(lines: list[dict]) -> None:
            for rec in lines:
                rec["itl"] = [0.001] * (rec["completion_tokens"] - 1)
                rec["end"] = round(rec["start"] + rec["ttft"] + 0.001 * (rec["completion_tokens"] - 1), 6)

        edit_jsonl(path, edit)
    for path in root.glob("runs/*/rep*/levels.jsonl"):
        recs = [json.loads(x) for x in (path.parent / "records.jsonl").read_text().splitlines()]

        def fix(levels: list[dict], recs=recs) -> None:
            for lv in levels:
                mine = [r for r in recs if r["phase"] == "measure" and r["concurrency"] == lv["concurrency"]]
                lv["start"], lv["end"] = min(r["start"] for r in mine), max(r["end"] for r in mine)

        edit_jsonl(path, fix)


def _relabel_one_run_gpu(root: Path) -> None:
    edit_json(root / "runs/slow/rep1/run.json", lambda r: r["host"]["gpus"][0].update(name="NVIDIA H200"))


def _gpu_type_without_name(root: Path) -> None:
    edit_json(root / "runs/slow/rep1/run.json", lambda r: r["host"].update(gpu_type="h200-sm90-141g"))


def _foreign_gpu_sample(root: Path) -> None:
    edit_json(root / RUN, lambda r: r.update(gpu={"gpu": "aaaaaaaaaaaa"}))
    (root / FAST0 / "gpu.jsonl").write_text('{"gpu": "bbbbbbbbbbbb", "t": 1764072000.5}\n')


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _report_number(root: Path) -> None:
    text = (root / "report.md").read_text()
    i = text.index("| fast")
    j = next(k for k in range(i, len(text)) if text[k].isdigit())
    (root / "report.md").write_text(text[:j] + str((int(text[j]) + 1) % 10) + text[j + 1 :])


def _partial_made_complete(root: Path) -> None:
    edit_json(root / "manifest.json", lambda m: m.update(complete=True, missing=[]))


def _rename(new: str) -> Callable[[Path], None]:
    return lambda path: path.rename(path.with_name(new))


CASES = [
    # raw request records: times
    Case("ttft NaN", _raw_line(REC, 1, '{"ttft": NaN}'), REC, "NaN", code=2, reseal=False),
    Case("end infinite", _rec_fn(lambda r: None), REC, "", code=2),  # replaced below (needs raw text)
    Case("negative ttft", _rec(1, ttft=-0.01), REC, "measure-0) ttft"),
    Case("end before start", _rec_fn(lambda r: r.update(end=r["start"] - 1)), REC, "measure-0) end"),
    Case("ttft beyond end", _rec_fn(lambda r: r.update(ttft=r["end"] - r["start"] + 0.5)), REC, "measure-0) ttft"),
    Case("negative gap", _rec_fn(lambda r: r["itl"].__setitem__(0, -0.2)), REC, "measure-0) itl"),
    Case("gaps longer than the stream", _rec_fn(lambda r: r["itl"].__setitem__(0, 5.0)), REC, "measure-0) itl"),
    Case("start not a wall clock", _rec_fn(lambda r: _shift(r, -r["start"] + 5.0)), REC, "measure-0) start"),
    Case("ok request without end", _rec(1, end=None), REC, "measure-0) end"),
    Case("more gaps than tokens", _rec_fn(lambda r: r["itl"].extend([0.0] * 10)), REC, "measure-0) itl"),
    Case("negative completion tokens", _rec(1, completion_tokens=-4), REC, "completion_tokens"),
    Case("measured request outside its level window", _rec_fn(lambda r: _shift(r, -100.0)), REC, "start..end"),
    # raw request records: identity and workload
    Case("record moved to another arm", _rec(1, arm="slow"), REC, "measure-0) arm"),
    Case("record of another repeat", _rec(1, repeat=1), REC, "measure-0) repeat"),
    Case("record of another experiment", _rec(1, experiment="other"), REC, "measure-0) experiment"),
    Case("prompt tokens off the workload", _rec(1, prompt_tokens=9), REC, "measure-0 prompt_tokens"),
    Case("completion tokens off the workload", _rec(1, completion_tokens=5), REC, "completion_tokens"),
    # raw request records: types and shapes
    Case("start as a string", _rec(1, start="yesterday"), REC, "line 2 start"),
    Case("concurrency as a list", _rec(1, concurrency=[1]), REC, "line 2 concurrency"),
    Case("ok as a string", _rec(1, ok="true"), REC, "line 2 ok"),
    Case("unknown field", _rec(1, injected=1), REC, "line 2 injected"),
    Case("record line is an array", _raw_line(REC, 1, "[1, 2, 3]"), REC, "line 2"),
    Case("deeply nested record", _raw_line(REC, 1, _deep(5000)), REC, "nested", code=2, reseal=False),
    Case("5000-digit integer", _raw_line(REC, 1, '{"index": ' + "9" * 5000 + "}"), REC, "digits", code=2, reseal=False),
    Case("number overflowing to infinity", _raw_line(REC, 1, '{"end": 1e999}'), REC, "infinity", code=2, reseal=False),
    Case("record not UTF-8", lambda root: append_bytes(root / REC, b"\xff\xfe\n"), REC, "UTF-8", code=2, reseal=False),
    # levels
    Case("level of another arm", _lev(0, arm="slow"), LEV, "arm"),
    Case("level asks for other request count", _lev(0, requests=3), LEV, "requests"),
    Case("level with other warmup", _lev(0, warmup=0), LEV, "warmup"),
    Case("level ends after its run", _lev(1, end=1764082000.0), LEV, "end"),
    Case(
        "levels overlap",
        lambda root: edit_jsonl(root / LEV, lambda ls: ls[1].update(start=ls[0]["start"])),
        LEV,
        "start",
    ),
    Case("level end before start", _lev(0, end=1000.0), LEV, "end"),
    # run.json
    Case("run status as a list", _run(lambda r: r.update(status=["ok"])), RUN, "status", tables=False, derived=False),
    Case(
        "host gpus as a string",
        _run(lambda r: r["host"].update(gpus="many")),
        RUN,
        "host.gpus",
        tables=False,
        derived=False,
    ),
    Case("run.json of another arm", _run(lambda r: r.update(arm="slow")), RUN, "arm"),
    Case(
        "run finished before it started",
        _run(lambda r: r.update(finished="2025-01-01T00:00:00+00:00")),
        RUN,
        "finished",
    ),
    Case("run.json nested deep", lambda root: (root / RUN).write_text(_deep(100)), RUN, "nested", code=2, reseal=False),
    Case(
        "kernels.json families as a list",
        lambda root: (root / FAST0 / "kernels.json").write_text('{"families": ["fa3"]}'),
        "kernels.json",
        "families",
        tables=False,
    ),
    Case(
        "kernel count as a string",
        lambda root: (root / FAST0 / "kernels.json").write_text(
            '{"families": {"cpu_attention": {"count": "many", "share": 1.0, "kernels": []}}}'
        ),
        "kernels.json",
        "families{}.count",
        tables=False,
    ),
    # config (the sealed section recomputed by the forger)
    Case(
        "config asks for other request counts",
        lambda root: edit_config(root, lambda c: c["sweep"].update(requests_per_level=3)),
        LEV,
        "requests",
    ),
    Case(
        "config workload with other prompt length",
        lambda root: edit_config(root, lambda c: c["workloads"]["short"].update(prompt_tokens=16)),
        REC,
        "prompt_tokens",
    ),
    Case(
        "config arm expects another backend",
        lambda root: edit_config(
            root, lambda c: c["arms"][0].update(backend="FLASH_ATTN", expect_backend="FLASH_ATTN")
        ),
        f"{FAST0}/server.log",
        "backend",
    ),
    Case(
        "config not a valid config",
        lambda root: edit_config(root, lambda c: c.update(workloads=[1])),
        "manifest.json",
        "config.workloads",
    ),
    # manifest, report, name
    Case("partial bundle made complete", _partial_made_complete, "manifest.json", "complete", reseal=False),
    Case("report number edited", _report_number, "report.md", "line", tables=False),
    Case(
        "bundle renamed to another GPU",
        lambda root: None,
        "bundle-h200",
        "file name",
        archive=_rename("bundle-h200-sm90-141g-20251125.tar.gz"),
    ),
    Case(
        "manifest nested deep",
        lambda root: (root / "manifest.json").write_text(_deep(3000)),
        "manifest.json",
        "nested",
        code=2,
        reseal=False,
    ),
    Case(
        "manifest 5000-digit number",
        lambda root: (root / "manifest.json").write_text('{"bundle_schema": ' + "1" * 5000 + "}"),
        "manifest.json",
        "digits",
        code=2,
        reseal=False,
    ),
    # archive
    Case(
        "data after the gzip stream",
        lambda root: None,
        "",
        "after the end of the gzip stream",
        code=2,
        archive=lambda p: append_bytes(p, b"hidden payload"),
    ),
    Case(
        "second gzip stream appended",
        lambda root: None,
        "",
        "after the end of the gzip stream",
        code=2,
        archive=lambda p: append_bytes(p, gzip_bytes(b"x" * 1000)),
    ),
    Case(
        "extra member with a terminal escape",
        lambda root: (root / "plots" / "\x1b[2Jx.png").write_bytes(b"x"),
        "plots/\\x1b[2Jx.png",
        "file",
        reseal=False,
    ),
    # GPU identity and physics (on the bundle relabelled as a consistent H100 run)
    Case(
        "one run relabelled to another GPU", _relabel_one_run_gpu, "runs/slow/rep1/run.json", "gpus[0].name", base="gpu"
    ),
    Case(
        "GPU type key not from its name", _gpu_type_without_name, "runs/slow/rep1/run.json", "host.gpu_type", base="gpu"
    ),
    Case("decode faster than memory bandwidth allows", _faster, REC, "end", base="gpu"),
    Case("gpu.jsonl from another GPU", _foreign_gpu_sample, f"{FAST0}/gpu.jsonl", "line 1 gpu", base="gpu"),
]
CASES[1] = Case("end infinite", _raw_line(REC, 1, '{"end": Infinity}'), REC, "Infinity", code=2, reseal=False)


def _to_gpu(root: Path) -> None:
    """Relabel the CPU fixture as a consistent H100 run: what every GPU case starts from (and must pass)."""
    for path in root.glob("runs/*/rep*/run.json"):
        edit_json(path, lambda r: r["host"].update(gpus=[dict(H100)], gpu_type=H100_TYPE))
    edit_config(
        root,
        lambda c: (
            c["engine"].update(device="cuda"),
            c["model"].update(architecture="config/models/qwen2.5-7b-instruct.json"),
        ),
    )
    reseal(root)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tamper")
    exp_dir, cfg = make_experiment(tmp / "results")
    path = bundle.build_bundle(exp_dir, cfg, tmp / "out", environ={KEY_ENV: SECRET})
    cpu = extract(path, tmp / "cpu")
    gpu = tmp / "gpu"
    shutil.copytree(cpu, gpu)
    _to_gpu(gpu)
    partial_dir, partial_cfg = make_experiment(tmp / "partial", missing_arm=True)
    partial = extract(bundle.build_bundle(partial_dir, partial_cfg, tmp / "pout"), tmp / "partial_x")
    return {"cpu": cpu, "gpu": gpu, "partial": partial}


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("base", ["cpu", "gpu", "partial"])
def test_untampered_bases_pass(bases, base, tmp_path):
    root = bases[base]
    name = bundle.bundle_name(json.loads((root / "manifest.json").read_text()))
    result = verify.verify_bundle(pack(root, tmp_path / name))
    assert result.findings == [] and result.exit_code == 0
    if base == "gpu":
        assert any("decode bound" in n for n in result.notes), result.notes


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_tampered_bundle_is_caught_naming_the_place(bases, case, tmp_path, capsys):
    base = "partial" if case.name == "partial bundle made complete" else case.base
    root = tmp_path / "x"
    shutil.copytree(bases[base], root)
    case.edit(root)
    if case.reseal:
        reseal(root, tables=case.tables, derived=case.derived)
    name = bundle.bundle_name(json.loads((bases[base] / "manifest.json").read_text()))
    path = pack(root, tmp_path / name)
    if case.archive:
        case.archive(path)
        path = next(p for p in tmp_path.iterdir() if p.name.endswith(".tar.gz"))
    try:
        result = verify.verify_bundle(path)
        lines = [str(f) for f in result.findings]
        code = result.exit_code
    except verify.BundleError as exc:  # unreadable archive: the CLI's exit 2
        lines, code = [str(exc)], 2
    assert any(case.file in line and case.field in line for line in lines), lines
    assert code == case.code, lines
    capsys.readouterr()
    assert main(["verify", str(path)]) == case.code
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert "\x1b" not in out.out + out.err  # no control character reaches the terminal
