"""Runs at interpreter start because this folder is first on PYTHONPATH in the xformers-cutlass image: registers
the patch that keeps xformers from dispatching to FlashAttention (attnbench_xformers_cutlass.py)."""

import importlib.util
import os
import sys

import attnbench_xformers_cutlass

attnbench_xformers_cutlass.install()

# Ours shadows any sitecustomize further down sys.path (Debian/Ubuntu Pythons ship one, another layer may have one):
# run the next one after this folder (never an earlier one, which would run twice or loop).
_here = os.path.dirname(os.path.abspath(__file__))
_entries = [os.path.abspath(e or os.getcwd()) for e in sys.path]
for _entry in _entries[_entries.index(_here) + 1 :] if _here in _entries else []:
    _candidate = os.path.join(_entry, "sitecustomize.py")
    if _entry != _here and os.path.isfile(_candidate):
        _spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", _candidate)
        _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break
