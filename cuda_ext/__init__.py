"""Ray-marching and hash-grid kernels for the head NeRF (METHOD.md section 2).

Three implementations per op with one behaviour: CUDA kernels, C++ CPU kernels and a torch reference
(reference.py). Importing this package never compiles: the first op on a device loads or builds the
matching extension (loader.py). Imports only torch and numpy.
"""

from .backend import backend_name
from .errors import KernelBuildError, KernelInputError
from .geometry import GridSpec, MarchSpec, make_grid_spec, make_march_spec
from .hashgrid import HashGridEncoder, TriPlaneEncoder, hash_encode
from .raymarching import (
    composite_rays,
    composite_rays_train,
    grid_cell_positions,
    march_rays,
    march_rays_train,
    morton3D,
    morton3D_invert,
    near_far_from_aabb,
    packbits,
    update_density_grid,
)

__all__ = [
    "GridSpec",
    "HashGridEncoder",
    "KernelBuildError",
    "KernelInputError",
    "MarchSpec",
    "TriPlaneEncoder",
    "backend_name",
    "composite_rays",
    "composite_rays_train",
    "grid_cell_positions",
    "hash_encode",
    "make_grid_spec",
    "make_march_spec",
    "march_rays",
    "march_rays_train",
    "morton3D",
    "morton3D_invert",
    "near_far_from_aabb",
    "packbits",
    "update_density_grid",
]
