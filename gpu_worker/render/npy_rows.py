"""``.npy`` files written and read by rows with plain file I/O, never memory-mapped.

A memmap of an hour of features looks free but is not: every page written or read stays mapped into
the process and counts in its resident memory (5 KB per mel frame: 460 MB over an hour of speech,
measured as a steady RSS climb during a render). Appending rows and reading a window of rows with
``os.pread`` keeps the process at the size of the rows in hand; the OS page cache does the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class NpyWriter:
    """Writes an array of a known shape to an ``.npy`` file, in order, a block of rows at a time."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype=np.float32) -> None:
        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)
        self.dtype = np.dtype(dtype)
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_1_0(self._fh, header)
        self._total = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.written = 0  # bytes of data so far

    def __setitem__(self, rows: slice, value: np.ndarray) -> None:
        """``writer[a:b] = block``: the next rows, in order (the rows of any shape: [b - a, ...])."""
        block = np.ascontiguousarray(value, dtype=self.dtype)
        start = rows.start or 0
        if len(block) and start * block[0].nbytes != self.written:
            raise ValueError(f"rows must be written in order: row {start} is not next")
        self._fh.write(block.tobytes())
        self.written += block.nbytes

    def close(self) -> None:
        """Close the file; it must hold exactly the declared shape's data."""
        self._fh.close()
        if self.written != self._total:
            raise ValueError(f"{self.path.name}: {self.written} bytes written, {self._total} declared")


class NpyRows:
    """Read-only rows of an ``.npy`` file: ``len()``, ``.shape``, ``rows[i]``, ``rows[a:b]`` and
    ``rows[int array]`` (one read covering the requested rows), ``np.asarray(rows)`` for all of it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
            self._offset = fh.tell()
        if fortran:
            raise ValueError(f"{self.path.name} is stored in Fortran order")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize  # bytes per row
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, a: int, b: int) -> np.ndarray:
        """Rows a..b-1 [b - a, ...]."""
        data = os.pread(self._fd, (b - a) * self._row, self._offset + a * self._row)
        return np.frombuffer(data, self.dtype).reshape(b - a, *self.shape[1:])

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, slice):
            a, b, step = key.indices(n)
            return self._read(a, max(a, b))[::step]
        idx = np.asarray(key)
        if idx.ndim == 0:
            i = int(idx) + (n if int(idx) < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {int(idx)} out of range for {n} rows")
            return self._read(i, i + 1)[0]
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"rows out of range for {n} rows")
        if idx.size == 0:
            return np.zeros((0, *self.shape[1:]), self.dtype)
        lo, hi = int(idx.min()), int(idx.max()) + 1  # a window of neighbouring rows: one read
        return self._read(lo, hi)[idx - lo]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._read(0, len(self))
        return out.astype(dtype) if dtype is not None else out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()
