"""Signed bundles: a real Ed25519 OpenSSH key signs with `attnbench bundle --sign-key` (ssh-keygen -Y sign); verify
shows the signer's fingerprint and allowed-signers status; one changed byte after signing fails; a key outside the
allowed signers is named as unknown; compare marks unsigned sources."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from bundlefixture import make_experiment

from attnbench.analysis import compare
from attnbench.bundles import bundle, signing, verify
from attnbench.cli import main

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen (openssh-client)")


def _key(tmp_path: Path, name: str) -> tuple[Path, str]:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@example", "-f", str(key)], check=True)
    fp = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True, check=True).stdout
    return key, fp.split()[1]


@pytest.fixture
def signed(tmp_path, monkeypatch):
    from attnbench import config as config_mod

    exp_dir, cfg = make_experiment(tmp_path / "results")
    monkeypatch.setattr(config_mod, "load_config", lambda path: cfg)  # the fixture's config is not a full one
    key, fp = _key(tmp_path, "alice")
    out = tmp_path / "out"
    assert main(["bundle", str(exp_dir), "--config", "unused.yaml", "--out", str(out), "--sign-key", str(key)]) == 0
    (path,) = out.glob("*.tar.gz")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"alice@example {Path(f'{key}.pub').read_text()}")
    return path, key, fp, allowed, cfg, exp_dir


def test_signed_bundle_verifies_with_signer_shown(signed, capsys):
    path, _, fp, allowed, _, _ = signed
    assert signing.signature_path(path).is_file()
    result = verify.verify_bundle(path, allowed_signers=allowed)
    assert result.ok and result.signature.state == "good" and result.signature.fingerprint == fp
    assert result.signature.principals == ("alice@example",)
    assert main(["verify", str(path), "--allowed-signers", str(allowed)]) == 0
    out = capsys.readouterr().out
    assert f"signature: signed by alice@example (ED25519 key {fp}" in out and "PASS" in out


def test_one_changed_byte_after_signing_fails(signed, tmp_path, capsys):
    path, *_ = signed
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    sig = signing.check(path)
    assert sig.state == "bad"
    assert main(["verify", str(path)]) in (1, 2)  # the flipped byte may also break the gzip stream
    assert "BAD SIGNATURE" in capsys.readouterr().out


def test_signature_of_the_archive_survives_a_valid_rebuild_only(signed, tmp_path):
    path, key, *_, cfg, exp_dir = signed
    # Re-bundling identical inputs gives identical bytes, so the old signature still holds for them.
    again = bundle.build_bundle(exp_dir, cfg, tmp_path / "again")
    assert again.read_bytes() == path.read_bytes()
    assert signing.check(again, signing.signature_path(path)).state == "good"


def test_unknown_key_is_reported_as_such(signed, tmp_path, capsys):
    path, key, fp, _, _, _ = signed
    _, other_fp = _key(tmp_path, "mallory")
    others = tmp_path / "others"
    others.write_text(f"mallory@example {Path(tmp_path / 'mallory.pub').read_text()}")
    result = verify.verify_bundle(path, allowed_signers=others)
    assert result.signature.state == "good" and result.signature.trusted is False
    assert [(f.field, f.found) for f in result.findings] == [("signer", fp)]
    assert main(["verify", str(path), "--allowed-signers", str(others)]) == 1
    assert f"signed by an UNKNOWN key: ED25519 key {fp} is not in" in capsys.readouterr().out


def test_unsigned_bundle_is_marked_and_fails_only_against_a_trust_list(signed, tmp_path, capsys):
    path, _, _, allowed, _, _ = signed
    signing.signature_path(path).unlink()
    assert verify.verify_bundle(path).ok
    assert main(["verify", str(path)]) == 0
    assert "signature: UNSIGNED" in capsys.readouterr().out
    assert main(["verify", str(path), "--allowed-signers", str(allowed)]) == 1


def test_sign_key_that_is_not_ed25519_is_refused(signed, tmp_path):
    path, *_ = signed
    rsa = tmp_path / "rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True)
    with pytest.raises(signing.BundleError, match="not an Ed25519 key"):
        signing.sign(path, rsa)


def test_compare_shows_signer_and_marks_unsigned(signed, tmp_path):
    path, _, fp, allowed, _, _ = signed
    exp2, cfg2 = make_experiment(tmp_path / "r2", experiment="other", gpu_type="cpu-other")
    unsigned = bundle.build_bundle(exp2, cfg2, tmp_path / "out2")
    written = compare.compare([path, unsigned], tmp_path / "cmp")
    table = (tmp_path / "cmp" / "sources.csv").read_text()
    assert fp in table and "UNSIGNED" in table
    assert "UNSIGNED" in written[0].read_text()
    named = compare.load_bundle(path, allowed_signers=allowed)
    assert named.signed == "alice@example"
