"""Expression coefficients: the 7 upper-face blendshapes of METHOD.md 1.3, smoothed in time.

The mouth is left to the audio; brows and blinks are what the model takes from the face.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import savgol_filter

# MediaPipe's 52 blendshape names in output order (ARKit names; index 0 is MediaPipe's _neutral).
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)  # fmt: skip

EXPRESSION_NAMES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "eyeBlinkLeft", "eyeBlinkRight",
)  # fmt: skip
EXPRESSION_INDICES = np.array([BLENDSHAPE_NAMES.index(n) for n in EXPRESSION_NAMES])

SAVGOL_WINDOW = 5
SAVGOL_ORDER = 3


def smooth_blendshapes(blendshapes: np.ndarray) -> np.ndarray:
    """Savitzky-Golay (window 5, order 3) along time, clipped back to the scores' 0..1 range. [N, C]"""
    bs = np.asarray(blendshapes, dtype=np.float32)
    if len(bs) < SAVGOL_WINDOW:
        return bs.copy()
    smooth = savgol_filter(bs, SAVGOL_WINDOW, SAVGOL_ORDER, axis=0, mode="interp")
    return np.clip(smooth, 0.0, 1.0).astype(np.float32)


def expression_coefficients(blendshapes: np.ndarray) -> np.ndarray:
    """The 7 smoothed upper-face coefficients from raw [N, 52] blendshapes. [N, 7]"""
    return smooth_blendshapes(np.asarray(blendshapes)[:, EXPRESSION_INDICES])
