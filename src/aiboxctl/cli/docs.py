"""Generate docs/cli.md from the command tree, so the reference cannot drift from --help.

    python -m aiboxctl.cli.docs > docs/cli.md
"""

from __future__ import annotations

import click
import typer


def _param_row(param: click.Parameter) -> str:
    if isinstance(param, click.Option):
        names = ", ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))
        help_text = (param.help or "").replace("\n", " ").replace("|", "\\|")
        default = param.default
        if param.is_flag or default in (None, (), False) or callable(default):
            shown = ""
        else:
            shown = f" [default: {getattr(default, 'value', default)}]"
        return f"| {names} | {param.type.name} | {help_text}{shown} |"
    return f"| `{param.human_readable_name}` (argument) | {param.type.name} | required={param.required} |"


def _walk(cmd: click.Command, path: list[str], out: list[str]) -> None:
    ctx = click.Context(cmd, info_name=" ".join(path))
    title = " ".join(path)
    out.append(f"{'#' * min(len(path) + 1, 4)} `{title}`\n")
    if cmd.help:
        out.append(cmd.help.strip() + "\n")
    pieces = " ".join(cmd.collect_usage_pieces(ctx))
    out.append(f"```\n{title} {pieces}\n```\n")
    params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
    if params:
        out.append("| option | type | description |\n|---|---|---|")
        out.extend(_param_row(p) for p in params)
        out.append("")
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.list_commands(ctx)):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                _walk(sub, [*path, name], out)


def generate() -> str:
    from aiboxctl.cli.app import app

    out = ["# aiboxctl command reference", "",
           "Generated from the command tree by `python -m aiboxctl.cli.docs > docs/cli.md`; "
           "a test fails when it drifts.", ""]
    _walk(typer.main.get_command(app), ["aiboxctl"], out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(generate())
