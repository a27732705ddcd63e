"""Head-Sync Stabilizer (METHOD.md 1.7): coarse pose with a focal search, rigid keypoint tracks, and a
bundle adjustment that makes the head pose smooth and consistent with the pixels."""
