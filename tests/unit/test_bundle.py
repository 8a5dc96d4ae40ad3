"""Bundle writing and `attnbench verify`: a clean bundle passes, is reproducible byte for byte and holds no secret;
every kind of tampering is detected and named; extraction never writes outside its folder."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from bundlefixture import HF_SECRET, KEY_ENV, SECRET, make_experiment, write_derived

from attnbench.analysis import aggregate
from attnbench.bundles import bundle, serverlog, verify
from attnbench.cli import main
from attnbench.errors import BundleError
from attnbench.measure.records import read_requests


@pytest.fixture
def built(tmp_path):
    exp_dir, cfg = make_experiment(tmp_path / "results")
    path = bundle.build_bundle(exp_dir, cfg, tmp_path / "out", environ={KEY_ENV: SECRET})
    return path, exp_dir, cfg


def extract(path: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    assert verify.safe_extract(path, dest) == []
    return dest


def pack(src: Path, out: Path, extra_members: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> Path:
    """Re-pack an extracted (and possibly edited) bundle folder, plus any hand-made members."""
    with tarfile.open(out, "w:gz") as tar:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(src).as_posix())
        for info, data in extra_members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def reseal(root: Path, rebuild_tables: bool = False) -> None:
    """What a careful forger does after editing files: rebuild tables, checksums and the manifest digest, so only
    the deeper checks (recompute, consistency) can catch the edit."""
    manifest = json.loads((root / "manifest.json").read_text())
    if rebuild_tables:
        aggregate.write_tables(root, manifest["config"])
    manifest["files"] = {
        rel: {"sha256": bundle.sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
        for rel in manifest["files"]
        if (root / rel).exists()
    }
    manifest["manifest_sha256"] = bundle.manifest_digest(manifest)
    (root / "manifest.json").write_text(bundle.canonical_json(manifest))


def findings_of(path: Path) -> list[verify.Finding]:
    return verify.verify_bundle(path).findings


def test_clean_bundle_passes_and_describes_the_run(built, capsys):
    path, _, cfg = built
    assert path.name.startswith("bundle-cpu-x86_64-2025") and path.name.endswith(".tar.gz")
    result = verify.verify_bundle(path)
    assert result.findings == []
    m = result.manifest
    assert m["bundle_schema"] == 2 and m["experiment"] == "unit" and m["gpu_type"] == "cpu-x86_64"
    assert m["complete"] is True and m["missing"] == []
    assert [a["name"] for a in m["arms"]] == ["fast", "slow"]
    assert all(r["status"] == "ok" and r["logged_backend"] == "CPU_ATTN" for a in m["arms"] for r in a["runs"])
    assert m["engine"]["versions"]["torch"] == "2.13.0+cpu"
    assert "runs/fast/rep1/records.jsonl" in m["files"] and "tables/levels.csv" in m["files"]
    assert main(["verify", str(path)]) == 0
    assert "PASS" in capsys.readouterr().out


def test_same_inputs_give_the_same_archive(built, tmp_path):
    path, exp_dir, cfg = built
    for p in exp_dir.rglob("*"):  # new mtimes must not change a byte
        os.utime(p, (1, 1))
    again = bundle.build_bundle(exp_dir, cfg, tmp_path / "again.tar.gz", environ={KEY_ENV: SECRET})
    assert again.read_bytes() == path.read_bytes()
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json" and names[1:] == sorted(names[1:])
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in tar.getmembers()} == {(0, 0, 0, 0o644)}


def test_no_secret_reaches_the_bundle(built, tmp_path):
    path, exp_dir, _ = built
    assert SECRET in (exp_dir / "runs/fast/rep0/server.log").read_text()  # the fixture really has secrets
    root = extract(path, tmp_path / "x")
    blobs = [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    assert len(blobs) > 10
    for blob in blobs + [path.read_bytes()]:
        for secret in (SECRET, HF_SECRET):
            assert secret.encode() not in blob
    assert bundle.REDACTED in (root / "runs/fast/rep0/server.log").read_text()


def test_config_order_survives_the_manifest(tmp_path):
    # Tables follow the config's order of workloads; a manifest with sorted keys would put "long" before "short"
    # and every recomputed table would differ from the stored one.
    workloads = {
        "short": {"prompt_tokens": 8, "output_tokens": 4, "concurrency": [1]},
        "long": {"prompt_tokens": 16, "output_tokens": 4, "concurrency": [1]},
    }
    exp_dir, cfg = make_experiment(tmp_path / "results", workloads=workloads)
    result = verify.verify_bundle(bundle.build_bundle(exp_dir, cfg, tmp_path / "b.tar.gz"))
    assert result.findings == []
    assert list(result.manifest["config"]["workloads"]) == ["short", "long"]


def test_harmless_values_of_secret_named_variables_do_not_wreck_the_data(tmp_path):
    exp_dir, cfg = make_experiment(tmp_path / "results")
    environ = {
        "TOKENIZERS_PARALLELISM": "false",
        "SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1",
        "MAX_TOKENS": "512",
        "MY_SERVICE_TOKEN": "tok-9f8e7d6c5b",
        KEY_ENV: SECRET,
    }
    assert bundle.secret_values(cfg, environ) == [SECRET, "tok-9f8e7d6c5b"]
    path = bundle.build_bundle(exp_dir, cfg, tmp_path / "b.tar.gz", environ=environ)
    assert verify.verify_bundle(path).ok


def test_scrub_patterns_without_env():
    text = (
        'argv ["--api-key", "abcdefgh123"] --api-key=zzzzzzzz9 Authorization: Bearer tok.en-1 '
        '{"HF_TOKEN": "plain-value-1"} OPENAI_API_KEY=qqqqqq77 hf_0123456789abcdefXYZ'
    )
    out = bundle.scrub(text, [])
    for leaked in ("abcdefgh123", "zzzzzzzz9", "tok.en-1", "plain-value-1", "qqqqqq77", "hf_0123456789abcdefXYZ"):
        assert leaked not in out
    assert json.loads(bundle.scrub(json.dumps({"argv": ["--api-key", "secretvalue"]}), []))  # stays valid JSON
    harmless = '{"tokenizer": "models/tok", "api_key_env": "MY_KEY_VAR", "max_tokens": "512"} MAX_TOKENS_X=5'
    assert bundle.scrub(harmless, []) == harmless


def test_partial_bundle_says_what_is_missing_and_verifies(tmp_path):
    exp_dir, cfg = make_experiment(tmp_path / "results", missing_arm=True)
    path = bundle.build_bundle(exp_dir, cfg, tmp_path)
    result = verify.verify_bundle(path)
    assert result.findings == []
    assert result.manifest["complete"] is False
    assert result.manifest["missing"] == [
        {"arm": "slow", "repeat": 0, "reason": "not run"},
        {"arm": "slow", "repeat": 1, "reason": "not run"},
    ]


# --- server logs: prompts elided ----------------------------------------------------------------------------------

_PARAMS = (
    "SamplingParams(n=1, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, temperature=1.0, "
    "top_p=1.0, top_k=-1, min_p=0.0, seed=None, stop=[], stop_token_ids=[], bad_words=[], "
    "include_stop_str_in_output=False, ignore_eos={eos}, max_tokens={max_tokens}, min_tokens=0, logprobs=None, "
    "prompt_logprobs=None, skip_special_tokens=True, spaces_between_special_tokens=True, "
    "truncate_prompt_tokens=None, guided_decoding=None)"
)
_TAIL = ", lora_request: None, prompt_adapter_request: None."
# Real vLLM 0.7.1 request lines (results/errata/runs/xformers/rep0/server.log); the chat prompt shortened to 127
# characters (its last words cut).
CHAT_071 = (
    "INFO 12-06 12:58:11 logger.py:37] Received request chatcmpl-a6cd841f819c45d08a1b2ade43e4ab72: prompt: "
    "'<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\nmuzi safu fazi doda"
    "<|im_end|>\\n<|im_start|>assistant\\n', params: "
    + _PARAMS.format(eos=True, max_tokens=512)
    + ", prompt_token_ids: None"
    + _TAIL
)
CMPL_071 = (
    "INFO 12-06 13:00:11 logger.py:37] Received request cmpl-59233d14558e4d1a89fad1d04e6059a3-0: prompt: 'probe', "
    "params: " + _PARAMS.format(eos=False, max_tokens=1) + ", prompt_token_ids: [3]" + _TAIL
)
TOKN_071 = (
    "INFO 12-06 12:58:11 logger.py:37] Received request tokn-66d9022d163f455ba6c0c572799181aa: prompt: "
    "'<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<|im_end|>\\n"
    "<|im_start|>assistant\\n', params: None, prompt_token_ids: None" + _TAIL
)
CHAT_071_ELIDED = (
    "INFO 12-06 12:58:11 logger.py:37] Received request chatcmpl-a6cd841f819c45d08a1b2ade43e4ab72: prompt: "
    "<elided: 127 chars>, params: " + _PARAMS.format(eos=True, max_tokens=512) + ", prompt_token_ids: None" + _TAIL
)
CMPL_071_ELIDED = (
    "INFO 12-06 13:00:11 logger.py:37] Received request cmpl-59233d14558e4d1a89fad1d04e6059a3-0: prompt: "
    "<elided: 5 chars>, params: "
    + _PARAMS.format(eos=False, max_tokens=1)
    + ", prompt_token_ids: <elided: 1 ids>"
    + _TAIL
)


@pytest.mark.parametrize(
    "line, elided",
    [
        (CHAT_071, CHAT_071_ELIDED),
        (CMPL_071, CMPL_071_ELIDED),
        (
            TOKN_071,
            "INFO 12-06 12:58:11 logger.py:37] Received request tokn-66d9022d163f455ba6c0c572799181aa: prompt: "
            "<elided: 108 chars>, params: None, prompt_token_ids: None" + _TAIL,
        ),
        # prompts with quotes (%r switches to double quotes, or escapes) and a longer prompt's ids
        (
            CMPL_071.replace("'probe'", repr("it's")).replace("[3]", "[3, 1045, 27]"),
            CMPL_071_ELIDED.replace("5 chars", "4 chars").replace("1 ids", "3 ids"),
        ),
        (
            CMPL_071.replace("'probe'", repr('it\'s "q"\t')),
            CMPL_071_ELIDED.replace("5 chars", "9 chars"),
        ),
        # vLLM 0.32's DEBUG line holds the same two fields
        (
            "DEBUG 05-01 10:00:00 [request_logger.py:55] Request cmpl-1-0 details: prompt: 'hi there', "
            "prompt_token_ids: [9, 8], prompt_embeds shape: None.",
            "DEBUG 05-01 10:00:00 [request_logger.py:55] Request cmpl-1-0 details: prompt: <elided: 8 chars>, "
            "prompt_token_ids: <elided: 2 ids>, prompt_embeds shape: None.",
        ),
    ],
)
def test_request_line_loses_its_prompt_and_keeps_the_rest(line, elided):
    assert serverlog.elide_requests(line + "\n") == (elided + "\n", 1)
    assert serverlog.count_marked(elided) == 1
    assert serverlog.elide_requests(elided) == (elided, 0)  # a bundled log has nothing left to elide


@pytest.mark.parametrize(
    "line",
    [
        "INFO 12-06 13:00:37 awq_marlin.py:109] The model is convertible to awq_marlin during runtime. "
        "Using awq_marlin kernel.",
        "INFO 12-06 13:00:41 cuda.py:235] Using XFormers backend.",
        'INFO:     127.0.0.1:39834 - "POST /tokenize HTTP/1.1" 200 OK',
        "Capturing CUDA graph shapes:   0%|          | 0/35 [00:00<?, ?it/s]\rCapturing CUDA graph shapes:   3%|",
        # vLLM 0.32's INFO request line names no prompt
        "(APIServer pid=1) INFO 05-01 10:00:00 [request_logger.py:65] Received request cmpl-1-0: "
        "params: SamplingParams(n=1, max_tokens=4), lora_request: None.",
        # a request line cut short (a killed server) or with a prompt that is no string: not recognised
        CHAT_071[:200],
        CMPL_071.replace("'probe'", "'\\x4'"),
        CMPL_071.replace("[3]", "[3, x]"),
        CHAT_071.replace("prompt: '<", "prompt: <"),
        # nothing to elide
        CMPL_071.replace("'probe'", "None").replace("[3]", "None"),
    ],
)
def test_lines_it_does_not_recognise_stay_byte_for_byte(line):
    text = line + "\r\n" + line
    assert serverlog.elide_requests(text) == (text, 0)


def _log_requests(exp_dir: Path) -> Path:
    """Append vLLM 0.7.1's request lines (and a tqdm line with its \\r) to one run's raw server log."""
    log = exp_dir / "runs/fast/rep0/server.log"
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"{TOKN_071}\nCapturing: 0%|  | 0/35\rCapturing: 3%|  | 1/35\n{CHAT_071}\n{CMPL_071}\n")
    return log


@pytest.fixture
def elided(tmp_path):
    """A bundle whose fast/rep0 server log had three request lines."""
    exp_dir, cfg = make_experiment(tmp_path / "results")
    log = _log_requests(exp_dir)
    path = bundle.build_bundle(exp_dir, cfg, tmp_path / "out", environ={KEY_ENV: SECRET})
    return path, log


def test_bundled_log_has_no_prompt_and_the_manifest_ties_it_to_the_original(elided, tmp_path):
    path, log = elided
    result = verify.verify_bundle(path)
    assert result.findings == []
    rel = "runs/fast/rep0/server.log"
    raw = log.read_bytes()
    assert result.manifest["elided"] == {
        rel: {
            "original_sha256": bundle.sha256_file(log),
            "original_bytes": len(raw),
            "original_lines": raw.count(b"\n"),
            "elided_lines": 3,
        }
    }
    bundled = (extract(path, tmp_path / "x") / rel).read_bytes()
    assert b"muzi" not in bundled and b"probe" not in bundled and b"[3]" not in bundled
    assert CHAT_071_ELIDED.encode() in bundled and CMPL_071_ELIDED.encode() in bundled
    # every other line as the run wrote it (secrets blanked), the backend evidence included
    raw_lines, bundled_lines = raw.split(b"\n"), bundled.split(b"\n")
    assert len(raw_lines) == len(bundled_lines)
    kept = [(r, b) for r, b in zip(raw_lines, bundled_lines) if b"Received request" not in r]
    assert b"Capturing: 0%|  | 0/35\rCapturing: 3%|  | 1/35" in [b for _, b in kept]
    assert all(bundle.scrub(r.decode(), [SECRET]).encode() == b for r, b in kept)
    assert all(r["logged_backend"] == "CPU_ATTN" for a in result.manifest["arms"] for r in a["runs"])


def test_tampered_elided_log_is_named(elided, tmp_path):
    path, _ = elided
    rel = "runs/fast/rep0/server.log"
    root = extract(path, tmp_path / "x")
    log = root / rel
    original = log.read_bytes()  # bytes: read as text, the tqdm line's \\r would become a line of its own

    def edit(old: str, new: str) -> None:
        log.write_bytes(original.replace(old.encode(), new.encode()))

    edit("<elided: 127 chars>", "<elided: 128 chars>")
    found = findings_of(pack(root, tmp_path / "t.tar.gz"))
    assert [(f.file, f.field) for f in found] == [(rel, "sha256")]
    # A forger who puts a prompt back and fixes the checksums: the marked lines no longer add up.
    edit(CHAT_071_ELIDED, CHAT_071)
    reseal(root)
    found = findings_of(pack(root, tmp_path / "t2.tar.gz"))
    assert found == [verify.Finding(rel, "elided lines", "3 (manifest: elided.elided_lines)", 2)]
    # ... or drops a request line
    edit(CMPL_071_ELIDED + "\n", "")
    reseal(root)
    found = findings_of(pack(root, tmp_path / "t3.tar.gz"))
    lines = original.count(b"\n")
    assert found == [
        verify.Finding(rel, "lines", f"{lines} (manifest: elided.original_lines)", lines - 1),
        verify.Finding(rel, "elided lines", "3 (manifest: elided.elided_lines)", 2),
    ]
    # The original's facts are sealed: an edit is named by its section.
    log.write_bytes(original)
    reseal(root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["elided"][rel]["original_bytes"] += 1
    manifest["manifest_sha256"] = bundle.manifest_digest(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert [(f.field, f.found) for f in findings_of(pack(root, tmp_path / "t4.tar.gz"))] == [("elided", "edited")]


# --- tampering ---------------------------------------------------------------------------------------------------


def _change_digit(text: str, after: str) -> str:
    i = text.index(after) + len(after)
    while not text[i].isdigit():
        i += 1
    return text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1 :]


def test_changed_digit_in_raw_record_is_named(built, tmp_path):
    path, _, _ = built
    root = extract(path, tmp_path / "x")
    rec = root / "runs/slow/rep1/records.jsonl"
    lines = rec.read_text().splitlines(keepends=True)
    assert '"phase":"measure"' in lines[1]  # line 1 is a warmup request, which no table uses
    lines[1] = _change_digit(lines[1], '"ttft":')
    rec.write_text("".join(lines))
    found = findings_of(pack(root, tmp_path / "t.tar.gz"))
    assert any(f.file == "runs/slow/rep1/records.jsonl" and f.field == "sha256" for f in found)
    # A forger who also fixes the checksums is caught by recomputing the tables from the raw records.
    reseal(root)
    found = findings_of(pack(root, tmp_path / "t2.tar.gz"))
    assert found and all(f.file.startswith("tables/") or f.file == "runs/slow/rep1/records.jsonl" for f in found)
    assert any(f.file == "tables/levels.csv" and "slow" in f.field for f in found), found


def test_changed_table_cell_is_named(built, tmp_path):
    path, _, _ = built
    root = extract(path, tmp_path / "x")
    table = root / "tables/levels.csv"
    lines = table.read_text().splitlines(keepends=True)
    lines[2] = _change_digit(lines[2], ",")
    table.write_text("".join(lines))
    reseal(root)
    found = findings_of(pack(root, tmp_path / "t.tar.gz"))
    assert len(found) == 1 and found[0].file == "tables/levels.csv" and found[0].field.startswith("line 3")
    assert found[0].expected != found[0].found


def test_changed_parquet_value_is_named(built, tmp_path):
    import pandas as pd

    path, _, _ = built
    root = extract(path, tmp_path / "x")
    table = root / "tables/levels.parquet"
    frame = pd.read_parquet(table)
    frame.loc[1, "generation_throughput_tps"] *= 1.01
    frame.to_parquet(table, index=False)
    reseal(root)
    found = findings_of(pack(root, tmp_path / "t.tar.gz"))
    assert [(f.file, f.field) for f in found] == [("tables/levels.parquet", "row 2 generation_throughput_tps")]


def test_removed_file_is_named(built, tmp_path):
    path, _, _ = built
    root = extract(path, tmp_path / "x")
    (root / "runs/fast/rep0/server.log").unlink()
    found = findings_of(pack(root, tmp_path / "t.tar.gz"))
    assert verify.Finding("runs/fast/rep0/server.log", "file", "listed in manifest and present", "missing") in found


def test_added_file_is_named(built, tmp_path):
    path, _, _ = built
    root = extract(path, tmp_path / "x")
    (root / "plots/extra.png").write_bytes(b"not from the run")
    found = findings_of(pack(root, tmp_path / "t.tar.gz"))
    assert [(f.file, f.found) for f in found] == [("plots/extra.png", "extra file")]


def test_edited_manifest_field_is_named(built, tmp_path):
    path, _, _ = built
    root = extract(path, tmp_path / "x")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["arms"][1]["runs"][0]["logged_backend"] = "FLASH_ATTN"
    (root / "manifest.json").write_text(json.dumps(manifest))
    found = findings_of(pack(root, tmp_path / "t.tar.gz"))
    assert any(f.field == "manifest_sha256" for f in found)
    # with a recomputed digest the field itself is still named, by comparison with run.json
    manifest["manifest_sha256"] = bundle.manifest_digest(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    found = findings_of(pack(root, tmp_path / "t2.tar.gz"))
    assert verify.Finding("manifest.json", "arms[slow].runs[0].logged_backend", "CPU_ATTN", "FLASH_ATTN") in found
    # a field nothing recomputes (the code version) is named by its sealed section
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["arms"][1]["runs"][0]["logged_backend"] = "CPU_ATTN"
    manifest["attnbench"]["version"] = "9.9.9"
    manifest["manifest_sha256"] = bundle.manifest_digest(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    found = findings_of(pack(root, tmp_path / "t3.tar.gz"))
    assert [(f.field, f.found) for f in found] == [("attnbench", "edited")]


def test_manifest_schema_violation_is_named(built, tmp_path):
    path, _, _ = built
    root = extract(path, tmp_path / "x")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["runs/fast/rep0/run.json"]["sha256"] = "xyz"
    (root / "manifest.json").write_text(json.dumps(manifest))
    found = findings_of(pack(root, tmp_path / "t.tar.gz"))
    assert [f.field for f in found] == ["files.runs/fast/rep0/run.json.sha256"]


def test_truncated_archive_is_a_clear_error(built, tmp_path, capsys):
    path, _, _ = built
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(BundleError, match="truncated or corrupt"):
        verify.verify_bundle(cut)
    assert main(["verify", str(cut)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not a gzip file at all")
    assert main(["verify", str(garbage)]) == 2


def _member(name: str, data: bytes = b"x", **kw) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data) if "type" not in kw else 0
    for k, v in kw.items():
        setattr(info, k, v)
    return info, (data if "type" not in kw else None)


@pytest.mark.parametrize(
    "member, reason",
    [
        (("../x",), "escapes"),
        (("sub/../../x",), "escapes"),
        (("ABSOLUTE",), "absolute path"),
        (("plots/link.png", b"", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}), "link"),
        (("plots/hard.png", b"", {"type": tarfile.LNKTYPE, "linkname": "manifest.json"}), "link"),
        (("dev", b"", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}), "special file"),
    ],
)
def test_unsafe_members_are_named_and_nothing_is_written(built, tmp_path, member, reason):
    path, _, _ = built
    root = extract(path, tmp_path / "src")
    outside = tmp_path / "victim"
    outside.mkdir()
    name = member[0] if member[0] != "ABSOLUTE" else str(outside / "abs.txt")
    data = member[1] if len(member) > 1 else b"pwned"
    info, blob = _member(name, data, **(member[2] if len(member) > 2 else {}))
    evil = pack(root, tmp_path / "evil.tar.gz", [(info, blob)])
    target = tmp_path / "deep" / "target"
    target.mkdir(parents=True)
    found = verify.safe_extract(evil, target)
    assert [(f.file, reason in f.found) for f in found] == [(name, True)]
    assert list(target.iterdir()) == []  # nothing extracted at all
    assert not (tmp_path / "deep" / "x").exists() and not (tmp_path / "x").exists()
    assert list(outside.iterdir()) == []
    result = verify.verify_bundle(evil)
    assert not result.ok and result.findings[0].file == name


# --- consistency checks (files resealed, so only these can catch them) --------------------------------------------


def _edit_records(root: Path, rel: str, edit) -> None:
    path = root / rel
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    edit(lines)
    path.write_text("".join(json.dumps(d, sort_keys=True, separators=(",", ":")) + "\n" for d in lines))


def test_token_count_off_target_is_named(built, tmp_path):
    path, _, _ = built
    root = extract(path, tmp_path / "x")

    def edit(lines):
        lines[3]["prompt_tokens"] = 9  # a measured request whose prompt was one token long

    _edit_records(root, "runs/fast/rep0/records.jsonl", edit)
    reseal(root, rebuild_tables=True)
    found = findings_of(pack(root, tmp_path / "t.tar.gz"))
    rid = read_requests(root / "runs/fast/rep0/records.jsonl")[3].request_id
    assert found == [verify.Finding("runs/fast/rep0/records.jsonl", f"{rid} prompt_tokens", 8, 9)]


def test_unaccounted_failure_and_missing_level_are_named(built, tmp_path):
    path, _, _ = built
    root = extract(path, tmp_path / "x")

    def fail_one(lines):
        lines[1].update(ok=False, error="timeout", completion_tokens=None)

    _edit_records(root, "runs/slow/rep0/records.jsonl", fail_one)
    _edit_records(root, "runs/fast/rep1/levels.jsonl", lambda lines: lines.pop())
    reseal(root, rebuild_tables=True)
    found = findings_of(pack(root, tmp_path / "t.tar.gz"))
    assert verify.Finding("runs/slow/rep0/levels.jsonl", "short c1 failed", 1, 0) in found
    assert (
        verify.Finding("runs/fast/rep1/levels.jsonl", "short c2", "level present (complete or failed)", "missing")
        in found
    )


def test_backend_mismatch_fails_unless_allowed(tmp_path):
    exp_dir, cfg = make_experiment(tmp_path / "results")
    rdir = exp_dir / "runs/slow/rep0"
    log = rdir / "server.log"
    log.write_text(log.read_text().replace("Using CPU_ATTN", "Using TORCH_SDPA"))
    run = json.loads((rdir / "run.json").read_text())
    run["backend"].update(logged="TORCH_SDPA", match=False)
    (rdir / "run.json").write_text(json.dumps(run))
    write_derived(exp_dir, cfg)
    found = findings_of(bundle.build_bundle(exp_dir, cfg, tmp_path / "a.tar.gz"))
    assert found == [verify.Finding("runs/slow/rep0/server.log", "backend", "CPU_ATTN", "TORCH_SDPA")]
    cfg["arms"][1]["allow_backend_mismatch"] = True
    write_derived(exp_dir, cfg)
    result = verify.verify_bundle(bundle.build_bundle(exp_dir, cfg, tmp_path / "b.tar.gz"))
    assert result.ok and any("TORCH_SDPA" in n and "allowed" in n for n in result.notes)


def test_run_json_backend_contradicting_the_log_is_named(tmp_path):
    exp_dir, cfg = make_experiment(tmp_path / "results")
    run_json = exp_dir / "runs/fast/rep1/run.json"
    run = json.loads(run_json.read_text())
    run["backend"]["logged"] = "FLASH_ATTN"
    run_json.write_text(json.dumps(run))
    write_derived(exp_dir, cfg)
    found = findings_of(bundle.build_bundle(exp_dir, cfg, tmp_path / "a.tar.gz"))
    assert found == [
        verify.Finding("runs/fast/rep1/run.json", "backend.logged", "CPU_ATTN (as server.log says)", "FLASH_ATTN")
    ]


def test_forbidden_kernel_family_fails(tmp_path):
    exp_dir, cfg = make_experiment(tmp_path / "results")
    cfg["arms"][0]["expect_kernels"] = {"require": ["paged_attention"], "forbid": ["fa2"]}
    for k in (0, 1):
        kernels = {
            "families": {
                "fa2": {"gpu_time_us": 5.0, "share": 0.5, "count": 3, "kernels": [{"name": "flash_fwd_splitkv"}]},
                "paged_attention": {"gpu_time_us": 5.0, "share": 0.5, "count": 3, "kernels": [{"name": "pa_v1"}]},
            }
        }
        (exp_dir / f"runs/fast/rep{k}/kernels.json").write_text(json.dumps(kernels))
    write_derived(exp_dir, cfg)
    result = verify.verify_bundle(bundle.build_bundle(exp_dir, cfg, tmp_path / "k.tar.gz"))
    assert result.manifest["arms"][0]["kernel_families"] == ["fa2", "paged_attention"]
    assert [f.file for f in result.findings] == ["runs/fast/rep0/kernels.json", "runs/fast/rep1/kernels.json"]
    assert all("fa2" in str(f.found) and "flash_fwd_splitkv" in str(f.found) for f in result.findings)


def test_bundle_cli_writes_receipt(built, tmp_path, monkeypatch, capsys):
    _, exp_dir, cfg = built
    from attnbench import config as config_mod

    monkeypatch.setattr(config_mod, "load_config", lambda path: cfg, raising=False)
    receipt = tmp_path / "bundle.sha256"
    assert (
        main(
            [
                "bundle",
                str(exp_dir),
                "--config",
                "unused.yaml",
                "--out",
                str(tmp_path / "cli"),
                "--receipt",
                str(receipt),
            ]
        )
        == 0
    )
    written = Path(capsys.readouterr().out.split()[0])
    assert written.parent == tmp_path / "cli"
    assert receipt.read_text() == f"{bundle.sha256_file(written)}  {written.name}\n"
