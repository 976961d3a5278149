"""MkDocs hook: the configuration, CLI and Python API references are generated from the code at build time, from
the pydantic settings' field descriptions, typer's options and the public functions' docstrings, so they cannot drift.
A page asks for one with a marker line: `<!-- ragtune:config -->`, `<!-- ragtune:cli -->` or `<!-- ragtune:api -->`.
"""

from __future__ import annotations

import inspect
import typing

import typer
from pydantic import BaseModel
from typer.core import TyperArgument, TyperOption


def _section_model(annotation) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("|", "\\|")


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default
    return "none" if value is None else f"`{value}`"


def config_reference() -> str:
    from ragtune.config import RunConfig

    out = []

    def table(model: type[BaseModel], prefix: str) -> None:
        rows, sections = [], []
        for name, field in model.model_fields.items():
            section = _section_model(field.annotation)
            if section is not None:
                sections.append((name, section, field))
                continue
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| `{prefix}{name}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
        if rows:
            out.extend(["| setting | type | default | what it does |", "|---|---|---|---|", *rows, ""])
        for name, section, field in sections:
            listed = typing.get_origin(field.annotation) is list
            out.extend([f"## `{prefix}{name}`", ""])
            if field.description:
                out.extend([field.description, ""])
            elif section.__doc__ and section.__doc__ != BaseModel.__doc__:
                out.extend([inspect.cleandoc(section.__doc__), ""])
            if listed:
                out.extend(["A list; each entry has:", ""])
            table(section, "" if listed else f"{prefix}{name}.")

    table(RunConfig, "")
    return "\n".join(out)


def cli_reference() -> str:
    from ragtune.cli import app

    group = typer.main.get_command(app)
    out = []
    global_options = [p for p in group.params if isinstance(p, TyperOption) and p.name != "help"]
    out.extend(_options_table(global_options, "Global options (before the command)"))
    for name, command in sorted(group.commands.items()):
        out.extend([f"## `ragtune {name}`", "", inspect.cleandoc(command.help or ""), ""])
        arguments = [p for p in command.params if isinstance(p, TyperArgument)]
        if arguments:
            usage = " ".join(a.name.upper() for a in arguments)
            out.extend([f"Arguments: `{usage}`", ""])
            for argument in arguments:
                help_text = getattr(argument, "help", None) or ""
                out.append(f"- `{argument.name.upper()}`: {help_text}")
            out.append("")
        options = [p for p in command.params if isinstance(p, TyperOption) and p.name != "help"]
        out.extend(_options_table(options, "Options"))
    return "\n".join(out)


def _kind(annotation) -> str:
    """An option's type as a reader wants it: its choices when it has them."""
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    inner = [a for a in typing.get_args(annotation) if a is not type(None)]
    if inner:  # Optional[X], list[X]
        return _kind(inner[0]) + (" (repeatable)" if typing.get_origin(annotation) is list else "")
    return getattr(annotation, "__name__", str(annotation))


def _options_table(options: list[TyperOption], title: str) -> list[str]:
    if not options:
        return []
    rows = [f"**{title}**", "", "| option | type | default | what it does |", "|---|---|---|---|"]
    for option in options:
        names = " / ".join(f"`{n}`" for n in option.opts + option.secondary_opts)
        kind = _kind(option.type_descriptor.annotation)
        default = "" if option.default in (None, (), []) else f"`{option.default}`"
        help_text = (option.help or "").replace("|", "\\|")
        rows.append(f"| {names} | {kind} | {default} | {help_text} |")
    return rows + [""]


def api_reference() -> str:
    import ragtune

    out = []
    for name in ragtune.__all__:
        value = getattr(ragtune, name)
        if inspect.isfunction(value):
            signature = str(inspect.signature(value)).replace("'", "")
            out.extend([f"## `ragtune.{name}`", "", "```python", f"ragtune.{name}{signature}", "```", ""])
        else:
            out.extend([f"## `ragtune.{name}`", ""])
        doc = inspect.getdoc(value) or ""
        out.extend(["```text", doc, "```", ""])
    return "\n".join(out)


MARKERS = {
    "<!-- ragtune:config -->": config_reference,
    "<!-- ragtune:cli -->": cli_reference,
    "<!-- ragtune:api -->": api_reference,
}


def on_page_markdown(markdown: str, **kwargs) -> str:
    for marker, generate in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
