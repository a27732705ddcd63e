"""Model files (MediaPipe tasks, encoder checkpoints): a manifest, fetchers and a verified-path lookup."""

from shared.model_files.manager import ModelManager, model_path
from shared.model_files.manifest import ModelSpec, get_spec, load_manifest

__all__ = ["ModelManager", "ModelSpec", "get_spec", "load_manifest", "model_path"]
