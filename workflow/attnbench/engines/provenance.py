"""What a run records about where it ran: host, GPUs, engine versions, git commit; and `redact`, which every
writer of logs, argv or environments passes its data through so that secrets never reach run folders or bundles."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from attnbench.engines import gpu

REDACTED = "***"

# The one redaction policy, for logs, run.json and bundles alike.
# A name is secret when its last part says so (HF_TOKEN, VLLM_API_KEY, AWS_SECRET_ACCESS_KEY, Authorization), not
# when a secret word is merely inside it: TOKENIZERS_PARALLELISM, model.tokenizer, api_key_env (the *name* of a
# variable) and max_tokens hold no secrets and must survive.
_SECRET_LAST = r"(?:api[_-]?key|access[_-]?key|key|token|secret|password|passwd|authorization|credentials?)"
SECRET_NAME = re.compile(r"^(?:[A-Za-z0-9]+[_.-])*" + _SECRET_LAST + r"$", re.IGNORECASE)
_SECRET_NAME_TEXT = r"(?:[A-Za-z0-9]+[_-])*" + _SECRET_LAST
SECRET_FLAGS = {"--api-key", "--hf-token", "--token", "--password"}
# Values of secret-named variables that are no secret and would wreck the data if blanked everywhere
# (TOKENIZERS_PARALLELISM=false would turn every JSON false into ***; SSH_AUTH_SOCK is a path).
_NOT_A_SECRET = re.compile(r"^(true|false|none|null|yes|no|on|off|[0-9.]+|/.*)$", re.IGNORECASE)
_PLAIN = r"(?!(?:true|false|none|null|yes|no|on|off|[0-9.]+|/[^\s\"']*)(?:[\s\"']|$))"  # such a value stays
MIN_SECRET_LEN = 8  # a shorter value blanked everywhere would hit ordinary text
# Shapes caught even when nobody told us the value: token formats, a secret flag followed by its value (in a log
# line or inside a JSON argv list), secret-named keys in JSON text or KEY=VALUE, secret HTTP headers.
SECRET_PATTERNS = [
    re.compile(r"()\bhf_[A-Za-z0-9]{8,}"),
    re.compile(r"()\bsk-[A-Za-z0-9_-]{16,}\b"),
    re.compile(r"(\b[Bb]earer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r'((?:--api-key|--hf-token|--token|--password)(?:=|\s+|",\s*"))[^\s"\',\]]+'),
    re.compile(r'("' + _SECRET_NAME_TEXT + r'"\s*:\s*")' + _PLAIN + r'(?:[^"\\]|\\.)+(?=")', re.IGNORECASE),
    re.compile(r"(\b" + _SECRET_NAME_TEXT + r"=)" + _PLAIN + r"[^\s\"']+", re.IGNORECASE),
    re.compile(r"(\b(?:proxy-authorization|x-api-key|api-key)\s*:\s*)[^\s\"']+", re.IGNORECASE),
]


def is_secret_name(name: object) -> bool:
    return isinstance(name, str) and bool(SECRET_NAME.match(name))


def looks_secret(value: object) -> bool:
    """A value worth blanking wherever it appears: long enough and not an ordinary word, number or path."""
    return isinstance(value, str) and len(value) >= MIN_SECRET_LEN and not _NOT_A_SECRET.match(value)


def secret_values(env: dict[str, str] | None = None, extra: Iterable[str | None] = ()) -> list[str]:
    """Values that must be blanked wherever they show up: those of secret-named variables that look like secrets,
    plus `extra` (e.g. the API key read from the variable the config names, whatever its name and shape)."""
    env = os.environ if env is None else env
    values = [v for k, v in env.items() if is_secret_name(k) and looks_secret(v)]
    values += [v for v in extra if v]
    return sorted(set(values), key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    for value in secrets:
        if value:
            text = text.replace(value, REDACTED)
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def redact_argv(argv: list[str], secrets: Iterable[str] = ()) -> list[str]:
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact_text(arg, secrets))
    return out


def redact(obj: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of obj (dict, list, str, scalars) with secrets blanked: values of secret-named keys (unless they are
    plainly no secret: true/false, numbers, paths), values after secret flags in argument lists, and any occurrence
    of a known secret value or token shape in strings."""
    secrets = list(secrets)
    if isinstance(obj, dict):
        return {
            k: (
                REDACTED
                if is_secret_name(k) and isinstance(v, str) and v and not _NOT_A_SECRET.match(v)
                else redact(v, secrets)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        if all(isinstance(a, str) for a in obj):
            return redact_argv(obj, secrets)
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj


def redact_file(path: Path, secrets: Iterable[str] = ()) -> None:
    """Rewrite a text file (a server log) with secrets blanked."""
    path = Path(path)
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
        clean = redact_text(text, secrets)
        if clean != text:
            path.write_text(clean, encoding="utf-8")


def _cmd(argv: list[str], timeout: float = 30) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


COMMIT_ENV = "ATTNBENCH_GIT_COMMIT"


def git_commit(repo: Path | None = None, env: dict[str, str] | None = None) -> dict:
    """The code's commit and whether tracked files differ from it. A copy without .git (an offline GPU host gets the
    working tree only) can name it in $ATTNBENCH_GIT_COMMIT as `git describe --always --dirty --abbrev=40` prints
    it (`<sha>` or `<sha>-dirty`); anything else there is ignored rather than recorded."""
    cwd = ["-C", str(repo)] if repo else []
    commit = _cmd(["git", *cwd, "rev-parse", "HEAD"])
    if commit is None:
        given = (os.environ if env is None else env).get(COMMIT_ENV, "").strip()
        match = re.fullmatch(r"([0-9a-f]{40})(-dirty)?", given)
        if match:
            return {"commit": match[1], "dirty": bool(match[2]), "source": COMMIT_ENV}
        return {"commit": None, "dirty": None}
    dirty = _cmd(["git", *cwd, "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info(cfg: dict) -> dict:
    gpus = [asdict(g) for g in gpu.detect_gpus()] if cfg["engine"].get("device") == "cuda" else []
    if cfg["engine"].get("device") == "cuda":
        gpu_type = gpu.resolve_gpu_type(cfg)
    else:
        fixed = (cfg.get("gpu") or {}).get("type", "auto")
        gpu_type = gpu.cpu_key() if fixed == "auto" else fixed
    return {
        "hostname_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "os": platform.platform(),
        "gpus": gpus,
        "gpu_type": gpu_type,
        "driver": gpus[0].get("driver") if gpus else None,
        "cuda": None,  # the engine's CUDA runtime is in engine.versions.cuda
    }


VERSIONS_SNIPPET = (
    "import json\n"
    "out = {}\n"
    "for name in ('vllm', 'torch', 'xformers', 'transformers'):\n"
    "    try:\n"
    "        out[name] = __import__(name).__version__\n"
    "    except Exception:\n"
    "        out[name] = None\n"
    "try:\n"
    "    import torch\n"
    "    out['cuda'] = torch.version.cuda\n"
    "except Exception:\n"
    "    out['cuda'] = None\n"
    "print('ATTNBENCH_VERSIONS ' + json.dumps(out))\n"
)


def engine_versions(python_argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Package versions as the engine itself imports them. python_argv runs a Python inside the engine's
    environment: [venv/bin/python], or ['apptainer', 'exec', IMAGE, 'python3']."""
    try:
        proc = subprocess.run(
            [*python_argv, "-c", VERSIONS_SNIPPET],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **(env or {}), "VLLM_LOGGING_LEVEL": "ERROR"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"cannot run {python_argv[0]}: {exc}"}
    for line in proc.stdout.splitlines():
        if line.startswith("ATTNBENCH_VERSIONS "):
            return json.loads(line.split(" ", 1)[1])
    return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"}
