"""Short speech-like WAVs, manifests, and the API started without workers (submission only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from gpu_worker.media.audio import write_wav
from gpu_worker.media.binaries import ffmpeg_exe

REPO = Path(__file__).resolve().parents[2]


def speech_wav(path: Path, seconds: float, seed: int) -> Path:
    """A voiced, syllable-rhythm signal (distinct content per seed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 110 + 40 * rng.random()
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * (3 + rng.random()) * t), 0, None)
    return write_wav(path, 0.25 * voice * envelope + 0.01 * rng.standard_normal(t.size), 16000)


def tiny_video(path: Path, seconds: float = 6.0) -> Path:
    lavfi = ["-f", "lavfi", "-i", f"testsrc=size=64x48:rate=25:duration={seconds}", "-f", "lavfi", "-i",
             f"sine=duration={seconds}"]  # fmt: skip
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *lavfi, "-c:v", "libx264", "-c:a", "aac", "-shortest",
                    str(path)], check=True)  # fmt: skip
    return path


class ApiOnly:
    """``synctalk api`` (uvicorn) alone: the real API on the embedded default, nothing rendered."""

    def __init__(self, env: dict, port: int, log: Path) -> None:
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "api", "--port", str(port)],
                                     env=env, cwd=REPO, stdout=self._fh, stderr=subprocess.STDOUT)  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError(log.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._fh.close()


def remote(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", "remote", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def count_renders(api, subject_id: str) -> int:
    return sum(1 for _ in api.iter_renders(subject_id=subject_id))
