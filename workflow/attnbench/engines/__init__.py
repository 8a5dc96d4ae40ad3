"""Engines: where vLLM runs (venv, native, Docker/podman, Apptainer), its server's lifecycle, GPUs, kernel evidence,
provenance."""
