"""Kernel speed at training-like sizes: compiled backend (C++ on CPU, CUDA on GPU) vs the torch reference.

    python bench/kernels.py [--device cpu|cuda] [--rays 65536] [--points 1048576] [--json out.json]

March + composite: 65,536 rays through a 128^3 occupancy grid (a sphere), up to 16 samples per ray,
composite forward + backward with 2 extra channels. Grid encoding: tri-plane, 3 planes x 12 levels x
2 features, 2^14 rows per level, on 1M points, forward + backward (table gradient).
Writes the table (and JSON) to $OUT/ too when OUT is set. Each row records the 1-minute load average
before it: on a shared machine the reference slows down more than the kernels, so compare idle runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cuda_ext as ce  # noqa: E402


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int) -> float:
    """Median seconds of `repeat` runs after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _load() -> str:
    """The 1-minute load average (os.getloadavg), or "-" where there is none."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "-"


def march_composite_case(n_rays: int, device: str):
    g = torch.Generator().manual_seed(0)
    o = (torch.randn(n_rays, 3, generator=g) * 0.05 + torch.tensor([0.0, 0.0, 3.0])).to(device)
    d = torch.randn(n_rays, 3, generator=g) * 0.25 + torch.tensor([0.0, 0.0, -1.0])
    d = torch.nn.functional.normalize(d, dim=1).to(device)
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    pos = ce.grid_cell_positions(aabb, 128, device=device)
    grid = ((pos.norm(dim=1) < 0.7).float() * 10)[None]
    bitfield = ce.packbits(grid, 0.01)
    nears, fars = ce.near_far_from_aabb(o, d, aabb)

    def run():
        xyzs, dirs, ts, rays = ce.march_rays_train(
            o, d, aabb, bitfield, nears, fars, grid_size=128, perturb=True
        )
        m = xyzs.shape[0]
        sig = (xyzs[:, 0].abs() * 20 + 1).requires_grad_()
        rgb = torch.sigmoid(xyzs).requires_grad_()
        ex = xyzs[:, :2].abs().requires_grad_()
        _, ws, depth, image, exs = ce.composite_rays_train(sig, rgb, ts, rays, ex)
        (ws.sum() + depth.sum() + image.sum() + exs.sum()).backward()
        return m

    return run


def grid_case(n_points: int, device: str):
    enc = ce.TriPlaneEncoder(num_levels=12, level_dim=2, log2_hashmap_size=14, bound=1.0).to(device)
    x = (torch.rand(n_points, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)

    def run():
        enc.zero_grad(set_to_none=True)
        enc(x).sum().backward()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rays", type=int, default=65536)
    parser.add_argument("--points", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=0, help="timed runs (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--skip-reference", action="store_true", help="time only the compiled backend")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    repeat = args.repeat or (20 if dev == "cuda" else 3)
    machine = (
        torch.cuda.get_device_name()
        if dev == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    backend = ce.backend_name(dev)
    rows = []
    cases = [
        (f"march + composite fwd/bwd ({args.rays} rays, <=16 samples)", march_composite_case(args.rays, dev)),
        (f"tri-plane hash grid fwd/bwd (3x12 levels x 2, {args.points} pts)", grid_case(args.points, dev)),
    ]
    for name, run in cases:
        load = _load()  # the torch reference slows down more than the kernels on a busy machine
        os.environ.pop("SYNCTALK_KERNELS", None)
        fast = timed(run, dev, repeat)
        slow = None
        if not args.skip_reference:
            os.environ["SYNCTALK_KERNELS"] = "torch"
            slow = timed(run, dev, max(1, min(repeat, 3)))
            os.environ.pop("SYNCTALK_KERNELS", None)
        row = {"case": name, "backend": backend, "seconds": fast, "reference_seconds": slow}
        rows.append(row | {"load_before": load})
    lines = [f"device: {machine} | torch {torch.__version__} | backend: {backend}", ""]
    lines.append(f"| case | {backend} (ms) | torch reference (ms) | speed-up | 1-min load before |")
    lines.append("|---|---:|---:|---:|---:|")
    for r in rows:
        ref_ms = f"{r['reference_seconds'] * 1e3:.1f}" if r["reference_seconds"] else "-"
        up = f"{r['reference_seconds'] / r['seconds']:.1f}x" if r["reference_seconds"] else "-"
        lines.append(f"| {r['case']} | {r['seconds'] * 1e3:.1f} | {ref_ms} | {up} | {r['load_before']} |")
    text = "\n".join(lines)
    print(text)
    out_dir = os.environ.get("OUT")
    payload = {"device": machine, "torch": torch.__version__, "rows": rows}
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        Path(out_dir, f"bench_kernels_{dev}.md").write_text(text + "\n")
        Path(out_dir, f"bench_kernels_{dev}.json").write_text(json.dumps(payload, indent=2))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
