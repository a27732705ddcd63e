"""Build entry point: ``python -m cuda_ext.build --cpu`` / ``--cuda`` (what `make kernels` and CI run).

Compiles into the on-disk cache (build_spec.build_dir), or finds it up to date; exits 1 on a compile
error. ``--cuda`` works without a GPU (compile check): archs from TORCH_CUDA_ARCH_LIST, default
8.0;8.6;8.9;9.0; CUDA_HOME should name the toolkit folder (e.g. /usr/local/cuda-13.0).
"""

from __future__ import annotations

import argparse
import sys
import time

from . import build_spec, loader
from .errors import KernelBuildError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cuda_ext.build", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="build the C++ CPU kernels")
    parser.add_argument("--cuda", action="store_true", help="build the CUDA kernels (no GPU needed)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show compiler commands")
    args = parser.parse_args(argv)
    variants = [v for v in ("cpu", "cuda") if getattr(args, v)] or ["cpu"]
    for variant in variants:
        if variant == "cuda":
            loader._cuda_env()
        start = time.monotonic()
        try:
            loader.build(variant, verbose=args.verbose)
        except KernelBuildError as exc:
            print(f"cuda_ext: {exc}", file=sys.stderr)
            return 1
        extra = f", archs {build_spec.cuda_arch_list()}" if variant == "cuda" else ""
        print(
            f"cuda_ext: {variant} kernels ready in {time.monotonic() - start:.1f} s{extra} -> {build_spec.build_dir(variant)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
