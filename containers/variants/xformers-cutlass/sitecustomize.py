"""Runs at interpreter start because this folder is first on PYTHONPATH in the xformers-cutlass image: registers
the patch that keeps xformers from dispatching to FlashAttention (attnbench_xformers_cutlass.py)."""

import importlib.util
import os
import sys

import attnbench_xformers_cutlass

attnbench_xformers_cutlass.install()

# Ours shadows any sitecustomize further down sys.path (Debian/Ubuntu Pythons ship one); run that one too.
_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    _candidate = os.path.join(_entry or os.getcwd(), "sitecustomize.py")
    if os.path.abspath(_entry or os.getcwd()) != _here and os.path.isfile(_candidate):
        _spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", _candidate)
        _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break
