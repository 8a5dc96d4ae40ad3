"""Bundle signatures with the OpenSSH key most people already have: `ssh-keygen -Y sign` writes
`<bundle>.sig` next to the archive (an SSH signature over the archive's exact bytes, namespace attnbench-bundle);
verify checks it with `ssh-keygen -Y check-novalidate`, names the signer's key fingerprint, and, given an
allowed-signers file (ssh-keygen's format: `principal ssh-ed25519 AAAA...`), says which principal the key belongs
to or that it is unknown.

Checksums inside a bundle only prove that the files agree with the manifest that lies beside them; a signature
proves that the holder of a key produced these exact bytes. It cannot prove the numbers were measured honestly.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from attnbench.errors import BundleError
from attnbench.safejson import printable

NAMESPACE = "attnbench-bundle"
SIG_SUFFIX = ".sig"
_GOOD = re.compile(r'^Good "[^"]*" signature (?:for \S+ )?with (?P<type>[A-Z0-9-]+) key (?P<fp>SHA256:[A-Za-z0-9+/=]+)')
TIMEOUT_S = 60


@dataclass(frozen=True)
class Signature:
    """What verify learned about a bundle's signature. state: unsigned | good | bad."""

    state: str
    fingerprint: str | None = None
    principals: tuple[str, ...] = ()
    allowed_signers: str | None = None  # the file checked against, if any
    detail: str = ""

    @property
    def trusted(self) -> bool | None:
        """True/False when an allowed-signers file was given, None otherwise."""
        if self.state != "good" or self.allowed_signers is None:
            return None if self.state == "good" else False
        return bool(self.principals)

    def describe(self) -> str:
        if self.state == "unsigned":
            return "UNSIGNED: no signature (anyone could have written this bundle)"
        if self.state == "bad":
            return f"BAD SIGNATURE: {self.detail}"
        who = f"ED25519 key {self.fingerprint}"
        if self.allowed_signers is None:
            return f"signed by {who} (no allowed-signers file given: signer not checked against a trust list)"
        if self.principals:
            return f"signed by {', '.join(self.principals)} ({who}, in {self.allowed_signers})"
        return f"signed by an UNKNOWN key: {who} is not in {self.allowed_signers}"

    def label(self) -> str:
        """Short form for tables (compare's sources)."""
        if self.state != "good":
            return self.state
        return ", ".join(self.principals) or self.fingerprint or "?"


def _ssh_keygen() -> str:
    exe = shutil.which("ssh-keygen")
    if exe is None:
        raise BundleError("ssh-keygen not found: install openssh-client to sign or check bundle signatures")
    return exe


def _run(args: list[str], stdin: Path | None = None) -> subprocess.CompletedProcess:
    try:
        if stdin is None:
            return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        with stdin.open("rb") as fh:
            return subprocess.run(args, stdin=fh, capture_output=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise BundleError(f"{args[0]} {args[1]} {args[2]}: no answer within {TIMEOUT_S} s") from None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def signature_path(archive: Path) -> Path:
    return archive.with_name(archive.name + SIG_SUFFIX)


def sign(archive: Path, key: Path) -> Path:
    """Sign the archive with an Ed25519 OpenSSH private key; returns the .sig path (replaced if present)."""
    key = Path(key)
    pub = key.with_name(key.name + ".pub")
    if not key.is_file():
        raise BundleError(f"--sign-key {key}: no such key file")
    if pub.is_file() and not pub.read_text(encoding="utf-8", errors="replace").startswith("ssh-ed25519 "):
        raise BundleError(
            f"--sign-key {key}: not an Ed25519 key ({pub} says otherwise); make one with ssh-keygen -t ed25519"
        )
    sig = signature_path(archive)
    sig.unlink(missing_ok=True)  # ssh-keygen refuses to overwrite
    done = _run([_ssh_keygen(), "-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(archive)])
    if done.returncode != 0 or not sig.is_file():
        reason = " ".join(_text(done.stderr).split()) or f"exit {done.returncode}"
        raise BundleError(f"--sign-key {key}: signing failed ({printable(reason)})")
    return sig


def check(archive: Path, sig: Path | None = None, allowed_signers: Path | None = None) -> Signature:
    """The signature state of an archive; sig defaults to <archive>.sig (absent: unsigned)."""
    sig = Path(sig) if sig is not None else signature_path(Path(archive))
    allowed = str(allowed_signers) if allowed_signers is not None else None
    if not sig.is_file():
        return Signature("unsigned", allowed_signers=allowed)
    if sig.stat().st_size > 64 << 10:
        return Signature("bad", allowed_signers=allowed, detail=f"{sig.name} is not an SSH signature (too large)")
    done = _run([_ssh_keygen(), "-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(sig)], stdin=Path(archive))
    out = _text(done.stdout).strip().splitlines()
    match = _GOOD.match(out[0]) if out else None
    if done.returncode != 0 or match is None:
        reason = " ".join(_text(done.stderr).split()) or "signature does not match the archive"
        return Signature("bad", allowed_signers=allowed, detail=f"{sig.name}: {printable(reason)}")
    if match["type"] != "ED25519":
        return Signature(
            "bad",
            match["fp"],
            allowed_signers=allowed,
            detail=f"{sig.name}: {match['type']} key; bundles are signed with Ed25519 keys",
        )
    principals: tuple[str, ...] = ()
    if allowed_signers is not None:
        if not Path(allowed_signers).is_file():
            raise BundleError(f"--allowed-signers {allowed_signers}: no such file")
        found = _run([_ssh_keygen(), "-Y", "find-principals", "-s", str(sig), "-f", str(allowed_signers)])
        candidates = [p for p in _text(found.stdout).split() if p] if found.returncode == 0 else []
        for principal in candidates:  # find-principals matches the key only; verify checks the bytes for each
            ok = _run(
                [
                    _ssh_keygen(),
                    "-Y",
                    "verify",
                    "-f",
                    str(allowed_signers),
                    "-I",
                    principal,
                    "-n",
                    NAMESPACE,
                    "-s",
                    str(sig),
                ],
                stdin=Path(archive),
            )
            if ok.returncode == 0:
                principals += (printable(principal),)
    return Signature("good", match["fp"], principals, allowed)
