"""One progress display for the long commands: a bar per step, made at the first progress event.

Made lazily, so input refused up front prints only its error line; a new bar starts when the step's
first word changes (``preprocess:track`` -> ``train:head``), the same bar goes on within a step.
"""

from __future__ import annotations


class ProgressBar:
    """A ``(step, fraction, message)`` progress callback drawing tqdm bars; ``close()`` when done."""

    def __init__(self, width: int = 70) -> None:
        self.bar = None
        self.step = ""
        self.width = width

    def __call__(self, step: str, fraction: float, message: str) -> None:
        from tqdm import tqdm

        if self.bar is None or step.split(":")[0] != self.step.split(":")[0]:
            self.close()
            self.bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed} {postfix}")
        self.step = step
        self.bar.set_description(step)
        self.bar.n = round(100 * min(max(fraction, 0.0), 1.0))
        self.bar.set_postfix_str(message[: self.width])
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
