"""Runs at interpreter start because this folder is on PYTHONPATH (the kernel probe on vLLM < 0.13 puts it there):
registers the patch that keeps vLLM 0.7's profiler from capturing stacks (attnbench_profiler_no_stack.py), then
runs the next sitecustomize on sys.path, if any (another layer's, or the distribution's)."""

import importlib.util
import os
import sys

import attnbench_profiler_no_stack

attnbench_profiler_no_stack.install()

_here = os.path.dirname(os.path.abspath(__file__))
_entries = [os.path.abspath(e or os.getcwd()) for e in sys.path]
for _entry in _entries[_entries.index(_here) + 1 :] if _here in _entries else []:
    _candidate = os.path.join(_entry, "sitecustomize.py")
    if _entry != _here and os.path.isfile(_candidate):
        _spec = importlib.util.spec_from_file_location("_next_sitecustomize", _candidate)
        _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break
