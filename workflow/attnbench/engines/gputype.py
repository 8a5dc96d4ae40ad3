"""GPU type keys: the name results, images and bundles are filed under for one kind of card.

The GPU type key is `<model slug>-sm<XY>-<memory GiB>g`, e.g. `rtx3070-laptop-sm86-8g` or
`h100-80gb-hbm3-sm90-80g`; a host without a GPU is `cpu-<machine>` (e.g. `cpu-x86_64`). Slug rules, applied to the
name the driver reports:
  1. lower-case; drop the vendor/family words `nvidia`, `geforce`, `tesla`, `quadro`, `gpu`;
  2. split on anything that is not a letter or digit;
  3. glue a product prefix (`rtx`, `gtx`, `gt`) to the number that follows it (`rtx 3070` -> `rtx3070`);
  4. join the words with `-`.
The compute capability becomes `sm` + its digits (8.6 -> sm86, 12.0 -> sm120) and the memory is total MiB / 1024
rounded to whole GiB (81559 MiB -> 80g). The key is what a peer with the same card gets, so bundles from equal cards
land under the same name. Detecting this host's card is gpu.py; what can run on a key is compat.py.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass

from attnbench.errors import AttnbenchError, CompatibilityError

DROP_WORDS = {"nvidia", "geforce", "tesla", "quadro", "gpu"}
GLUE_PREFIXES = {"rtx", "gtx", "gt"}
KEY_RE = re.compile(r"^(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)-sm(?P<major>\d+)(?P<minor>\d)-(?P<gib>\d+)g$")
CPU_KEY_RE = re.compile(r"^cpu-(?P<machine>[a-z0-9_]+)$")


@dataclass
class GpuType:
    """A GPU type key taken apart; sm and memory are None for a CPU key."""

    key: str
    slug: str
    compute_cap: str | None  # "8.6"
    memory_gib: int | None

    @property
    def is_cpu(self) -> bool:
        return self.compute_cap is None


def slugify(name: str) -> str:
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w and w not in DROP_WORDS]
    glued: list[str] = []
    for word in words:
        if glued and glued[-1] in GLUE_PREFIXES and word[0].isdigit():
            glued[-1] += word
        else:
            glued.append(word)
    return "-".join(glued)


def gpu_type_key(name: str, compute_cap: str, memory_mib: int) -> str:
    major, _, minor = str(compute_cap).strip().partition(".")
    if not (major.isdigit() and (minor or "0").isdigit()):
        raise AttnbenchError(f"GPU {name!r}: compute capability {compute_cap!r} is not of the form 8.6")
    gib = round(memory_mib / 1024)
    return f"{slugify(name)}-sm{int(major)}{int(minor or 0)}-{gib}g"


def cpu_key(machine: str | None = None) -> str:
    return "cpu-" + re.sub(r"[^a-z0-9_]+", "_", (machine or platform.machine() or "unknown").lower())


def parse_gpu_type(key: str) -> GpuType:
    match = KEY_RE.match(key)
    if match:
        cc = f"{int(match['major'])}.{match['minor']}"
        return GpuType(key, match["slug"], cc, int(match["gib"]))
    if CPU_KEY_RE.match(key):
        return GpuType(key, key, None, None)
    raise CompatibilityError(
        f"gpu.type: {key!r} is not a GPU type key; expected <model>-sm<XY>-<GiB>g such as rtx3070-laptop-sm86-8g, "
        f"a CPU key such as cpu-x86_64, or auto"
    )
