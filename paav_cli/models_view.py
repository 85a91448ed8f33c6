"""`paav models list`: the registry as a table (or JSON records)."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from paav_cli import registry


def _status(entry: registry.ModelEntry) -> str:
    if isinstance(entry, registry.MutatorEntry) and entry.backend == "openai":
        return "api"
    if registry.is_present(entry):
        return "yes"
    # A packaged model is assembled by whatever first loads it; anything else takes `paav models pull`.
    return "on first use" if entry.source_kind == "package" and not registry.is_made(entry) else "no"


def rows(role: str | None = None, *, include_tiny: bool = False) -> list[dict]:
    """The registry's entries as table rows; tiny random test models (builder = "tiny") only on request:
    they are for tests and the tiny-cpu recipe, and would crowd the real models out of a user's list."""
    reg = registry.Registry.load(keep_going=True)
    if reg.problem:
        import sys

        print(f"warning: {reg.problem} (listing the built-in models only)", file=sys.stderr)
    roles = [role] if role else list(registry.ROLES)
    for r in roles:
        if r not in registry.ROLES:
            from paav_cli.errors import UserError

            raise UserError(f"unknown role {r!r}; the roles are {', '.join(registry.ROLES)}.")
    out = []
    for r in roles:
        for entry in reg.by_role(r):
            if entry.builder == "tiny" and not include_tiny:
                continue
            out.append(
                {
                    "name": entry.name,
                    "role": registry.ROLE_TITLES[r],
                    "size": registry.human_size(entry),
                    "license": entry.license,
                    "source": entry.source,
                    "local": _status(entry),
                    "notes": entry.notes or entry.description,
                }
            )
    return out


def list_models(role: str | None = None, as_json: bool = False, *, include_tiny: bool = False) -> None:
    """Print `rows` as one table per role, or as JSON lines."""
    data = rows(role, include_tiny=include_tiny)
    if as_json:
        for row in data:
            print(json.dumps(row, ensure_ascii=False))
        return
    console = Console()
    for title in dict.fromkeys(row["role"] for row in data):
        table = Table(title=f"{title}s", title_justify="left", expand=False)
        table.add_column("name", no_wrap=True, style="bold")
        table.add_column("size", no_wrap=True)
        table.add_column("license", overflow="fold")
        table.add_column("local", no_wrap=True)
        table.add_column("notes", overflow="fold")
        for row in data:
            if row["role"] == title:
                table.add_row(row["name"], row["size"], row["license"], row["local"], row["notes"])
        console.print(table)
