"""Measuring: prompts, the HTTP client, per-request records, sweeps and open-loop load, metrics."""
