"""One problem `attnbench verify` found in a bundle: which file, which record and field, what was expected, what
was there. Printed on one terminal-safe line."""

from __future__ import annotations

import json
from dataclasses import dataclass

from attnbench.safejson import printable


@dataclass(frozen=True)
class Finding:
    file: str
    field: str
    expected: object
    found: object

    def __str__(self) -> str:
        return (
            f"{printable(self.file)}: {printable(self.field)}: expected {short(self.expected)}, "
            f"found {short(self.found)}"
        )


def short(value: object, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return printable(text, limit)
