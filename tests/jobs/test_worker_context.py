"""The GPU worker's model cache: many renders of one subject load it once; the least recently used
subject is closed (its model and source decoder freed) beyond the cache size."""

from __future__ import annotations

from gpu_worker.tasks.cache import WorkerCache
from gpu_worker.tasks.context import WorkerContext
from shared.settings import Settings


class Loaded:
    """Stands for a Renderer: counts how often it is closed."""

    def __init__(self, name: str) -> None:
        self.name, self.closed = name, 0

    def close(self) -> None:
        self.closed += 1


def test_renders_of_one_subject_load_it_once_and_the_oldest_is_closed(tmp_path):
    ctx = WorkerContext(
        settings=Settings(data_dir=tmp_path, model_cache_size=2), engine=None, storage=None, celery=None,
        cache_dir=tmp_path, cache=WorkerCache(tmp_path, 0),
    )  # fmt: skip
    built: list[str] = []

    def build(name: str):
        def make() -> Loaded:
            built.append(name)
            return Loaded(name)

        return make

    a = ctx.renderer("a", build("a"))
    assert ctx.renderer("a", build("a")) is a and built == ["a"]  # the second render reuses the model
    b = ctx.renderer("b", build("b"))
    ctx.renderer("a", build("a"))  # a is now the most recent
    c = ctx.renderer("c", build("c"))  # over the size: b (least recent) goes
    assert built == ["a", "b", "c"] and b.closed == 1 and a.closed == 0 and c.closed == 0
    ctx.forget("a")
    assert a.closed == 1 and ctx.renderer("a", build("a")) is not a
