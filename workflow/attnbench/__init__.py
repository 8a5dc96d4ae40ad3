"""attnbench: reproducible vLLM attention-backend benchmarks."""

__version__ = "0.1.0"
