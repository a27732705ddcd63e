"""Rendering and dubbing: a trained subject + a speech track -> a finished, muxed video (docs/RENDER.md).

Importing this package loads nothing heavy; the stage function lives in ``gpu_worker.render.stage``.
"""
