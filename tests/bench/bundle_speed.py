"""Bundle benchmark: time to write, verify and compare bundles, and their size, for a synthetic experiment of the
size a GPU run produces (the article's matrix: 2 arms, short 1..128 + long 1..4, N repeats, 512 output tokens).

    python tests/bench/bundle_speed.py [--repeats 3] [--requests-per-level 64]

Prints numbers; asserts nothing. The experiment is written with the unit tests' fixture writer (records.py
dataclasses), tables with aggregate.write_tables, so every step runs the real code paths.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from bundlefixture import make_config, write_derived, write_run  # noqa: E402

from attnbench.analysis import compare
from attnbench.bundles import (
    bundle,
    verify,  # noqa: E402
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests-per-level", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = make_config("bench", repeats=args.repeats)
        cfg["workloads"] = {
            "short": {"prompt_tokens": 45, "output_tokens": 512, "concurrency": [1, 2, 4, 8, 16, 32, 64, 128]},
            "long": {"prompt_tokens": 2771, "output_tokens": 512, "concurrency": [1, 2, 4]},
        }
        cfg["sweep"].update(requests_per_level=args.requests_per_level, warmup_requests=2)
        exp = root / "bench"
        t0 = time.perf_counter()
        rng = random.Random(0)
        for arm in cfg["arms"]:
            for k in range(args.repeats):
                write_run(exp, cfg, arm, k, speed=1.0 if arm["name"] == "fast" else 0.8, rng=rng)
        write_derived(exp, cfg)
        raw = sum(p.stat().st_size for p in exp.rglob("records.jsonl"))
        print(
            f"experiment: {len(cfg['arms'])} arms x {args.repeats} repeats x 11 levels x "
            f"{args.requests_per_level} requests; raw records {raw / 1e6:.1f} MB "
            f"(written in {time.perf_counter() - t0:.1f} s)"
        )
        t0 = time.perf_counter()
        path = bundle.build_bundle(exp, cfg, root / "out")
        t_build = time.perf_counter() - t0
        print(
            f"bundle:  {t_build:6.2f} s  {path.stat().st_size / 1e6:.2f} MB ({raw / path.stat().st_size:.1f}x "
            f"smaller than the raw records)"
        )
        t0 = time.perf_counter()
        result = verify.verify_bundle(path)
        print(f"verify:  {time.perf_counter() - t0:6.2f} s  {'PASS' if result.ok else result.findings[:3]}")
        t0 = time.perf_counter()
        compare.compare([path], root / "cmp", reference="article")
        print(f"compare: {time.perf_counter() - t0:6.2f} s  (one bundle vs the article, verify included)")


if __name__ == "__main__":
    main()
