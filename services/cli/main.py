"""The ``synctalk`` command line.

Sub-commands are imported only when run (or when ``--help`` lists them), so ``synctalk --help`` stays
fast and no command pays for another's heavy imports (torch, mediapipe).
"""

from __future__ import annotations

import importlib

import click

from shared.errors import SyncTalkError

# name -> "module:attribute" of a click command; each module keeps heavy imports inside its functions.
COMMANDS: dict[str, str] = {
    "models": "services.cli.models_cmd:models",
    "probe": "services.cli.media_cmd:probe",
    "sample": "services.cli.sample_cmd:sample",
    "preprocess": "services.cli.preprocess_cmd:preprocess",
    "train-ave": "services.cli.model_cmd:train_ave",
    "train": "services.cli.model_cmd:train",
    "eval": "services.cli.model_cmd:evaluate",
    "render": "services.cli.render_cmd:render",
    "dub": "services.cli.render_cmd:dub",
    "serve": "services.cli.platform_cmd:serve",
    "api": "services.cli.platform_cmd:api",
    "worker": "services.cli.platform_cmd:worker",
    "scheduler": "services.cli.scheduler_cmd:scheduler",
    "migrate": "services.cli.platform_cmd:migrate",
    "keys": "services.cli.platform_cmd:keys",
    "remote": "services.cli.remote_cmd:remote",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):
        # Expected failures (bad input, missing model file, ...) print one clear line, no traceback.
        try:
            return super().invoke(ctx)
        except SyncTalkError as exc:
            raise click.ClickException(f"[{exc.code}] {exc}") from exc


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="synctalk-platform")
def cli() -> None:
    """SyncTalk platform: learn a talking person from video, then dub new speech onto them."""


if __name__ == "__main__":
    cli()
