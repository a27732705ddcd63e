"""``synctalk probe FILE``: check a media file the way an upload is checked and print what it contains."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--require-audio", is_flag=True, help="Fail unless the file has an audio stream.")
@click.option("--audio-only", is_flag=True, help="Accept files without a video stream (speech tracks).")
def probe(file: str, require_audio: bool, audio_only: bool) -> None:
    """Print streams, codecs, duration, frame rate (incl. variable), size, rotation and audio as JSON.

    Refused inputs (not a file, empty, not media, truncated, playlists, over the limits) exit non-zero
    with one line giving the reason and its error code.
    """
    from gpu_worker.media.probe import probe as probe_file

    info = probe_file(file, require_video=not audio_only, require_audio=require_audio)
    click.echo(json.dumps(info.to_dict(), indent=2))
