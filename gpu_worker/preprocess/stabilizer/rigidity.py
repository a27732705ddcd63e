"""How rigidly each face landmark moves with the skull, from where it sits on the canonical face.

Forehead, nose and upper cheeks ride on bone; eyelids blink, brows lift, lips and jaw move with speech,
and the silhouette points slide along the face's outline as the head turns.
"""

from __future__ import annotations

import numpy as np

from gpu_worker.preprocess.canonical_face import CanonicalFace
from gpu_worker.preprocess.parsing import FACE_OVAL

# Eye corner pairs (outer, inner) on the canonical mesh: right eye 33/133, left eye 263/362.
_EYES = ((33, 133), (263, 362))


def landmark_rigidity(face: CanonicalFace) -> np.ndarray:
    """Weight in 0..1 per canonical vertex (468): 1 rigid, near 0 for parts that move. [468]"""
    v = face.vertices  # [468, 3] cm, +y up
    w = np.ones(len(v))
    below_nose = v[:, 1] < -2.3  # lips, chin, jaw, lower cheeks
    w[below_nose] = 0.05
    for outer, inner in _EYES:
        c = (v[outer] + v[inner]) / 2
        half = abs(v[outer, 0] - v[inner, 0]) / 2 + 0.5
        near = ((v[:, 0] - c[0]) / half) ** 2 + ((v[:, 1] - c[1]) / 1.2) ** 2 < 1.0
        w[near] = 0.05
    brows = (v[:, 1] > 3.3) & (v[:, 1] < 5.2) & (np.abs(v[:, 0]) > 0.8)
    w[brows] = np.minimum(w[brows], 0.3)
    w[FACE_OVAL] = np.minimum(w[FACE_OVAL], 0.2)
    return w
