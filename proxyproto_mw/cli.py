"""The ``proxyproto-mw`` command: ``serve``, ``inspect``, ``probe`` and ``aws``.

Each command lives in its own module, imported when it is run (or listed by ``--help``), so
that ``inspect`` and ``probe`` work without uvicorn and ``aws`` without boto3; a command
whose server is not installed says what to install.
"""

from __future__ import annotations

import importlib

import click

from . import __version__

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "serve": ("proxyproto_mw.serve:serve", "uvicorn", "proxyproto-mw[uvicorn]"),
    "inspect": ("proxyproto_mw.inspector:inspect_command", None, None),
    "probe": ("proxyproto_mw.probe:probe_command", None, None),
    "aws": ("proxyproto_mw.aws:aws_group", None, None),
}
"""Command name: (``module:attribute``, the import it needs, the install that brings it)."""


class _Commands(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target, needs, install = COMMANDS[cmd_name]
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            if needs is None or error.name is None or error.name.split(".")[0] != needs:
                raise
            return _missing(cmd_name, needs, install or needs)
        command: click.Command = getattr(module, attribute)
        return command


def _missing(name: str, needs: str, install: str) -> click.Command:
    """A stand-in for a command whose server is not installed: it says what to install."""

    def fail() -> None:
        raise click.UsageError(f"{name} needs {needs}: pip install '{install}'")

    return click.Command(
        name,
        callback=fail,
        help=f"(needs {needs}: pip install '{install}')",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="proxyproto-mw")
def main() -> None:
    """PROXY protocol for Python web servers."""


if __name__ == "__main__":  # pragma: no cover
    main()
