"""Where the package's data and the checkout live. Modules sit one level below the package in subpackages, so
each computing `Path(__file__).parents[n]` for itself breaks with every move; they ask here."""

from __future__ import annotations

from pathlib import Path

# workflow/attnbench/: package data (schemas, models and reference are links into the checkout's folders).
PACKAGE_DIR = Path(__file__).resolve().parent
# The checkout's root (Snakefile, config/, containers/); meaningful only when running from a checkout.
REPO_ROOT = PACKAGE_DIR.parents[1]
