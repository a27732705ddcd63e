"""One DatasetError (shared.errors, code dataset_invalid) for the dataset's writer and its readers."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gpu_worker.model.dataparser as dataparser
import gpu_worker.preprocess.errors as preprocess_errors
from gpu_worker.ave.data import load_clip
from shared.errors import DatasetError, SyncTalkError


def test_one_class_one_code(tmp_path):
    assert issubclass(DatasetError, SyncTalkError) and DatasetError.code == "dataset_invalid"
    assert not hasattr(preprocess_errors, "DatasetError")  # no second class beside PreprocessError
    assert dataparser.DatasetError is DatasetError  # the name datamanager imports is the same class
    with pytest.raises(DatasetError) as err:
        dataparser.parse_dataset(tmp_path / "nope")
    assert err.value.code == "dataset_invalid"
    with pytest.raises(DatasetError) as err:
        load_clip(tmp_path)  # the AVE's reader
    assert err.value.code == "dataset_invalid"


@pytest.mark.parametrize(
    ("module", "other_side"),
    [
        ("gpu_worker.preprocess.pipeline", "gpu_worker.model"),
        ("gpu_worker.model.dataparser", "gpu_worker.preprocess"),
    ],
)
def test_neither_side_imports_the_other_to_raise_it(module, other_side):
    """The writer (preprocessing) and the reader (the model's dataparser) each load without the other
    side's modules, and without torch."""
    code = (
        f"import sys, {module}\n"
        f"assert not [m for m in sys.modules if m.startswith('{other_side}')], 'loaded {other_side}'\n"
        "assert 'torch' not in sys.modules, 'loaded torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
