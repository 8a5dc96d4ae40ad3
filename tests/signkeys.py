"""A real Ed25519 OpenSSH key pair made with ssh-keygen, and an allowed-signers file that trusts it: what a peer
holds to sign and check bundles (workflow tests; tests/unit/test_signing.py makes its own)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def ed25519_key(folder: Path, principal: str) -> tuple[Path, Path]:
    """(private key, allowed-signers file naming principal) in folder, which must not exist yet."""
    folder.mkdir(parents=True)
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(key)], check=True)
    allowed = folder / "allowed_signers"
    allowed.write_text(f"{principal} " + " ".join(key.with_suffix(".pub").read_text().split()[:2]) + "\n")
    return key, allowed
