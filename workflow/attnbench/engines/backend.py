"""The attention backend of an arm: how each vLLM version is asked for it.

One module of its own (no server, image or run code), so that what selects a backend can be read, tested and
imported, by `attnbench verify` too, without the run orchestrator."""

from __future__ import annotations

import json

from attnbench.config import ATTENTION_FLAG_VERSION, version_tuple
from attnbench.errors import ConfigError


def backend_selection(vllm_version: str, arm: dict) -> tuple[list[str], dict[str, str]]:
    """(server args, env) that request the arm's attention backend from this vLLM version.

    Before 0.11 vLLM reads VLLM_ATTENTION_BACKEND; from 0.11 on it ignores that variable and takes
    --attention-backend, or --attention-config when a FlashAttention version is pinned as well (never both flags).
    """
    backend = arm.get("backend")
    fa_version = arm.get("flash_attn_version")
    if backend is None and fa_version is None:
        return [], {}
    if version_tuple(vllm_version) < ATTENTION_FLAG_VERSION:
        if fa_version is not None:
            raise ConfigError(
                f"arms.{arm.get('name')}.flash_attn_version: vLLM {vllm_version} cannot pin a FlashAttention version"
            )
        return [], {"VLLM_ATTENTION_BACKEND": backend}
    if fa_version is not None:
        attention = {"flash_attn_version": fa_version}
        if backend is not None:
            attention = {"backend": backend, **attention}
        return ["--attention-config", json.dumps(attention, separators=(",", ":"))], {}
    return ["--attention-backend", backend], {}
