"""Errors of the kernel package.

cuda_ext must import with torch and numpy only (it also runs on GPU hosts without the rest of the
project), so these do not derive from shared.errors.SyncTalkError; they carry the same ``code``
attribute so callers can map them the same way.
"""

from __future__ import annotations


class KernelInputError(ValueError):
    """A tensor handed to a kernel has the wrong device, dtype, shape or value."""

    code = "kernel_input"


class KernelBuildError(RuntimeError):
    """The C++/CUDA extension could not be compiled or loaded."""

    code = "kernel_build"
