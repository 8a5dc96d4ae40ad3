"""`attnbench image`: the engine images' command line (render, build and inspect docker images; build, layer,
export and import Apptainer images). The work is done elsewhere: lock.py (containers/lock.yaml), images.py (what an
image is, rendering), dockerbuild.py (docker builds), dockerserver.py (the server in a container), apptainer.py
(base images and arm layers), apptainer_transfer.py (offline hosts), image_provenance.py (what run.json records).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attnbench.config import arm_by_name, load_config
from attnbench.engines.apptainer import build_base, write_layer
from attnbench.engines.apptainer_exec import IMAGES_DIR, base_sif
from attnbench.engines.apptainer_transfer import export_image, import_image
from attnbench.engines.compat import check_compatible
from attnbench.engines.dockerbuild import build_image, inspect_docker_image
from attnbench.engines.gpu import resolve_gpu_type
from attnbench.engines.images import image_spec, render_dockerfile
from attnbench.engines.lock import load_lock

# --- docker -------------------------------------------------------------------------------------------------------


def _arm_of(args: argparse.Namespace) -> tuple[dict, dict, str]:
    """(config, arm, GPU type) that --config, --arm and --gpu-type name."""
    cfg = load_config(args.config)
    return cfg, arm_by_name(cfg, args.arm), resolve_gpu_type(cfg, args.gpu_type)


def _cmd_build(args: argparse.Namespace) -> int:
    cfg, arm, gpu_type = _arm_of(args)
    record = build_image(cfg, arm, gpu_type, Path(args.out), lock=load_lock(args.lock))
    state = "pinned" if record["pinned"] else "UNPINNED"
    print(f"built {record['ref']} ({state}, base {record['base_ref']}, resolved digest {record['resolved_digest']})")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    cfg, arm, gpu_type = _arm_of(args)
    lock = load_lock(args.lock)
    check_compatible(cfg, gpu_type, lock, [arm])
    print(render_dockerfile(image_spec(cfg, arm, gpu_type, lock)), end="")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    print(json.dumps(inspect_docker_image(args.ref), indent=2, sort_keys=True))
    return 0


# --- apptainer ----------------------------------------------------------------------------------------------------


def _cmd_build_base(args: argparse.Namespace) -> int:
    record = build_base(
        args.key, load_lock(args.lock), images_dir=args.images_dir, log_path=Path(args.log) if args.log else None
    )
    print(f"built {base_sif(args.key, args.images_dir)}: {record['sif_bytes']} bytes, sha256 {record['sif_sha256']}")
    return 0


def _cmd_layer(args: argparse.Namespace) -> int:
    cfg, arm, gpu_type = _arm_of(args)
    record = write_layer(cfg, arm, gpu_type, Path(args.out), load_lock(args.lock), args.images_dir)
    print(f"arm {args.arm}: base {record['base_sif_sha256'][:16]}..., layer {record['digest']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    manifest = export_image(args.key, Path(args.out), images_dir=args.images_dir, part_mib=args.part_mib)
    print(f"exported {args.key}: {len(manifest['parts'])} parts in {args.out}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    record = import_image(Path(args.src), load_lock(args.lock), key=args.key, images_dir=args.images_dir)
    print(f"imported {record['key']} into {base_sif(record['key'], args.images_dir)} (sha256 {record['sif_sha256']})")
    return 0


# --- the parser ---------------------------------------------------------------------------------------------------


def _arm_options(c: argparse.ArgumentParser) -> None:
    """The options that name one arm of one experiment on one GPU type (build, render, layer)."""
    c.add_argument("--config", required=True, help="experiment config YAML")
    c.add_argument("--arm", required=True, help="arm name")
    c.add_argument("--gpu-type", default=None, help="GPU type key (default: gpu.type; auto = detect)")


def register(subparsers) -> None:
    text = "engine images: render and build docker images, build/export/import Apptainer base images and arm layers"
    p = subparsers.add_parser("image", help=text, description=text)
    sub = p.add_subparsers(dest="image_command", required=True, metavar="ACTION")

    def action(name: str, func, text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=text, description=text)
        c.set_defaults(func=func)
        return c

    for name, func, text in (
        (
            "build",
            _cmd_build,
            "runtime docker: check the GPU pair, render and build one arm's image; write image.json to --out",
        ),
        ("render", _cmd_render, "print one arm's rendered Dockerfile"),
    ):
        c = action(name, func, text)
        _arm_options(c)
        c.add_argument("--lock", default=None, help="lock file (default: containers/lock.yaml)")
        if name == "build":
            c.add_argument("--out", required=True, help="image.json to write; the Dockerfile goes next to it")
    for name, func, text in (
        (
            "build-base",
            _cmd_build_base,
            "build an engine line's Apptainer base image from its hash-locked requirements",
        ),
        ("layer", _cmd_layer, "write an arm's layer record (base image sha256, backend env, variant checksums)"),
        ("export", _cmd_export, "write a built base image as checksummed parts for a host without network"),
        ("import", _cmd_import, "join and check exported parts into results/images/<line>/ (refuses another lock)"),
    ):
        c = action(name, func, text)
        c.add_argument("--lock", default=None, help="lock file (default: containers/lock.yaml)")
        c.add_argument("--images-dir", default=None, help=f"base images folder (default: {IMAGES_DIR})")
        if name in ("build-base", "export"):
            c.add_argument("--key", required=True, help="engine line, a key of containers/lock.yaml")
        if name == "build-base":
            c.add_argument("--log", default=None, help="build log (default: <images-dir>/<key>/build.log)")
        if name == "layer":
            _arm_options(c)
            c.add_argument("--out", required=True, help="layer record to write")
        if name == "export":
            c.add_argument("--out", required=True, help="folder for the parts and <key>.export.json")
            c.add_argument("--part-mib", type=int, default=60, help="part size in MiB [60]")
        if name == "import":
            c.add_argument("src", help="folder holding <key>.export.json and its parts")
            c.add_argument("--key", default=None, help="engine line (default: the one export in SRC)")
    i = action("inspect", _cmd_inspect, "print a local docker image's ID, digests and labels")
    i.add_argument("ref", help="image reference")
