"""Stub: replaced by its owner (docs/DESIGN.md)."""


def register(subparsers) -> None:
    pass
