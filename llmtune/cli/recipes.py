"""``llmtune recipes list | show | copy | validate``."""

from __future__ import annotations

from typing import Annotated

import typer

from llmtune.cli import _common as c
from llmtune.cli.app import app

recipes_app = typer.Typer(help="List, show, copy and validate recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("list")
@c.handle_errors
def recipes_list() -> None:
    """List shipped recipes."""
    from llmtune.recipes import list_recipes, recipe_description

    rows = list_recipes()
    width = max((len(name) for name, _ in rows), default=10)
    for name, path in rows:
        typer.echo(f"{name:<{width}}  {recipe_description(path)}")


@recipes_app.command("show")
@c.handle_errors
def recipes_show(name: Annotated[str, typer.Argument(help="Recipe name or path.")]) -> None:
    """Print a recipe's YAML, then the task's own defaults (as YAML comments)."""
    from llmtune.config import read_yaml
    from llmtune.errors import ConfigError
    from llmtune.recipes import find_recipe, task_defaults_comment

    path = find_recipe(name)
    typer.echo(path.read_text(encoding="utf-8").rstrip())
    task = read_yaml(path).get("task")
    if isinstance(task, str):
        try:
            comment = task_defaults_comment(task)
        except ConfigError:  # an unknown task: `recipes validate` names it
            comment = ""
        if comment:
            typer.echo(comment)


@recipes_app.command("copy")
@c.handle_errors
def recipes_copy(
    name: Annotated[str, typer.Argument(help="Recipe name.")],
    dest: Annotated[str, typer.Argument(help="Destination file or folder.")],
) -> None:
    """Copy a shipped recipe to edit it."""
    from llmtune.recipes import copy_recipe

    typer.echo(f"copied to {copy_recipe(name, dest)}")


@recipes_app.command("validate")
@c.handle_errors
def recipes_validate(
    files: Annotated[list[str], typer.Argument(help="Recipe files or names.")],
    sets: c.Sets = None,
) -> None:
    """Check recipes: unknown keys, types and cross-field problems, all reported at once."""
    from llmtune.errors import ConfigError
    from llmtune.resolve import load_config

    bad = 0
    for item in files:
        try:
            load_config(recipe=item, sets=sets)
            typer.echo(f"ok: {item}")
        except ConfigError as exc:
            bad += 1
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    if bad:
        raise typer.Exit(2)
