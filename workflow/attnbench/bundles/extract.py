"""Safe extraction of a received bundle (verify's first check): only plain files with clean relative paths, one gzip
stream and nothing after it, bounded sizes and member counts; a truncated or corrupt archive is an error of its own
(UnsafeInputError, exit 2). Nothing is written until the whole archive has been read once without writing."""

from __future__ import annotations

import io
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from attnbench.bundles.finding import Finding
from attnbench.errors import BundleError, UnsafeInputError
from attnbench.safejson import printable


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
            # Input the last call left undecompressed (output is capped at 1 MiB a call) comes before new input:
            # dropping it corrupted every member that compresses more than 16:1 (a 64 KiB chunk, > 1 MiB out).
            chunk = self._z.unconsumed_tail or self._raw.read(1 << 16)
            if not chunk:
                raise UnsafeInputError(f"{self._name}: truncated or corrupt archive (the gzip stream ends early)")
            self._buf = self._z.decompress(chunk, 1 << 20)
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


DEFAULT_LIMITS = Limits()


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


def safe_extract(archive: Path, target: Path, limits: Limits = DEFAULT_LIMITS) -> list[Finding]:
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
