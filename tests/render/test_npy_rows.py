"""Rows of an .npy file written and read with plain file I/O: the same numbers as NumPy's own format, and
no growth of the process's resident memory however much of the file is read (a memmap grows it)."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_worker.render.npy_rows import NpyRows, NpyWriter


def test_rows_round_trip_and_index_like_an_array(tmp_path):
    data = np.random.default_rng(0).standard_normal((50, 4, 3)).astype(np.float32)
    w = NpyWriter(tmp_path / "a.npy", data.shape)
    for a in range(0, 50, 16):
        w[a : a + 16] = data[a : a + 16]
    w.close()
    assert np.array_equal(np.load(tmp_path / "a.npy"), data)  # a standard .npy file
    rows = NpyRows(tmp_path / "a.npy")
    assert len(rows) == 50 and rows.shape == data.shape and rows.dtype == np.float32
    assert np.array_equal(rows[7], data[7]) and np.array_equal(rows[-1], data[-1])
    assert np.array_equal(rows[3:9], data[3:9]) and np.array_equal(rows[40:99], data[40:])
    window = np.array([[4, 5, 6, 7], [0, 0, 1, 2]])  # the audio net's windows (clamped at the ends)
    assert np.array_equal(rows[window[0]], data[window[0]]) and np.array_equal(
        rows[window[1]], data[window[1]]
    )
    assert np.array_equal(np.asarray(rows), data)
    with pytest.raises(IndexError):
        rows[50]
    with pytest.raises(IndexError):
        rows[np.array([1, 50])]


def test_writer_refuses_rows_out_of_order_and_short_files(tmp_path):
    w = NpyWriter(tmp_path / "b.npy", (10, 2))
    w[0:4] = np.zeros((4, 2))
    with pytest.raises(ValueError, match="in order"):
        w[6:8] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="declared"):
        w.close()


def _rss_file_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssFile:"))


def test_reading_every_row_leaves_resident_memory_flat(tmp_path):
    """Walking all 64 MB of rows: a memmap maps every page it touched into the process; NpyRows does not."""
    n, shape = 4096, (80, 16, 4)  # 16 KB per row
    w = NpyWriter(tmp_path / "big.npy", (n, *shape))
    for a in range(0, n, 256):
        w[a : a + 256] = np.ones((256, *shape), np.float32)
    w.close()

    rows = NpyRows(tmp_path / "big.npy")
    before = _rss_file_kb()
    total = sum(float(rows[np.arange(i, i + 8)][0, 0, 0, 0]) for i in range(0, n - 8, 8))
    grown = _rss_file_kb() - before
    assert total == (n - 8) // 8 and grown < 8 * 1024  # KB: far less than the 64 MB read

    mm = np.load(tmp_path / "big.npy", mmap_mode="r")
    before = _rss_file_kb()
    total = sum(float(mm[i : i + 8][0, 0, 0, 0]) + float(mm[i : i + 8].sum() * 0) for i in range(0, n - 8, 8))
    assert _rss_file_kb() - before > 32 * 1024  # the memmap's pages stay resident (what NpyRows avoids)
