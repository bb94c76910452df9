"""``cpt pipeline`` and ``cpt recipes`` (see docs/multistage.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer


def register(app: typer.Typer, pm: Any) -> None:
    @app.command("pipeline")
    def pipeline_command(
        recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML (paths in it are relative to its folder)."),
        preset: Optional[str] = typer.Option(None, "--preset", help="Start from a shipped recipe (cpt recipes lists them); RECIPE and --set override it."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a recipe key: dotted.key=value (YAML value); repeatable."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (steps, done or to run and why, stage budgets in tokens, time estimate); run nothing."),
        print_recipe: bool = typer.Option(False, "--print", help="Print the merged recipe as YAML and stop."),
    ) -> None:
        """Run a recipe from raw text to the trained model: tokenizer, expand, resize, prepare, train, export; steps already done are skipped."""
        from ..recipes.pipeline import load_recipe, merged_tree

        if print_recipe:
            import yaml

            tree, _, _ = merged_tree(recipe, preset, set_ or [])
            typer.echo(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True).rstrip())
            return
        loaded = load_recipe(recipe, preset, set_ or [])
        from ..recipes.pipeline_run import describe_plan, make_plan, run_pipeline

        if dry_run:
            describe_plan(loaded, make_plan(loaded), typer.echo)
            return
        run_pipeline(loaded, pm, echo=typer.echo)
        export = loaded.out / "steps" / "export" / "model"
        typer.echo(f"pipeline done: {export if export.is_dir() else loaded.out / 'steps' / 'train'}")

    @app.command("recipes")
    def recipes_command() -> None:
        """List the shipped recipe presets (cpt pipeline --preset NAME) and their sources."""
        from ..config import read_yaml
        from ..recipes.pipeline import preset_names, preset_path

        for name in preset_names():
            tree = read_yaml(preset_path(name))
            typer.echo(f"{name}: {tree.get('description', '')}")
            for src in tree.get("sources") or []:
                typer.echo(f"    source: {src}")
