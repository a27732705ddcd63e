"""Media I/O used by every stage: probe, normalize, stream frames in and out, load and write audio.

Every input is treated as hostile: only regular local files, only a whitelist of containers, only the
``file`` protocol, and limits from settings checked before anything is decoded (see docs/MEDIA.md).
"""
