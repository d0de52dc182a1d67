"""Training configs are dataclasses; this turns one into `--key value` command-line flags and back.

Every field becomes a flag of its own type (bool flags take true/false, tuples take several
values), named presets ("recipes") replace the defaults before the flags apply, and the result is
printed at start and stored in every checkpoint as a plain dict. Nothing is evaluated or
interpolated: a value is parsed by its field's type and nothing else.
"""

import argparse
import dataclasses
import inspect
import io
import json
import tokenize
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

ConfigT = TypeVar("ConfigT")

TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off"}


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _field_flag_kwargs(annotation: Any) -> dict[str, Any]:
    """argparse keyword arguments for one field type: bool, int, float, str or a tuple of one of them."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        return {**_field_flag_kwargs(item_type), "nargs": "*"}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"config fields must have one type, got {annotation}")
    if annotation is bool:
        return {"type": parse_bool, "metavar": "{true,false}"}
    if annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(f"config field type {annotation} is not supported (bool, int, float, str, tuple[...])")


def field_comments(config_class: type) -> dict[str, str]:
    """The comment at the end of each field's line in the class source: the flag's --help text."""
    try:
        source = inspect.getsource(config_class)
    except (OSError, TypeError):
        return {}
    comments, names_on_line = {}, {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        line = token.start[0]
        if token.type == tokenize.NAME and line not in names_on_line:
            names_on_line[line] = token.string
        elif token.type == tokenize.COMMENT and line in names_on_line:
            comments[names_on_line[line]] = token.string.lstrip("#").strip()
    return comments


def build_parser(config_class: type, *, description: str = "", recipes: Mapping[str, Mapping] | None = None):
    """An ArgumentParser with one `--field value` flag per dataclass field (plus `--recipe`)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if recipes:
        parser.add_argument("--recipe", choices=sorted(recipes), help="named preset applied before the other flags")
    hints = typing.get_type_hints(config_class)
    comments = field_comments(config_class)
    for field in dataclasses.fields(config_class):
        help_text = f"{comments.get(field.name, '')} (default: {field.default!r})".strip()
        parser.add_argument(f"--{field.name}", default=None, help=help_text, **_field_flag_kwargs(hints[field.name]))
    return parser


def parse_config(
    config_class: type[ConfigT],
    argv: Sequence[str] | None = None,
    *,
    description: str = "",
    recipes: Mapping[str, Mapping[str, Any]] | None = None,
) -> ConfigT:
    """Defaults, then the chosen recipe's values, then the flags given; unknown flags are an error."""
    parser = build_parser(config_class, description=description, recipes=recipes)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    recipe = args.pop("recipe", None)
    if recipe is not None:
        values.update(recipes[recipe])
    values.update({key: value for key, value in args.items() if value is not None})
    return make_config(config_class, values)


def make_config(config_class: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
    """Build a config from a dict (e.g. one stored in a checkpoint); lists become tuples again."""
    names = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} fields: {', '.join(unknown)}")
    hints = typing.get_type_hints(config_class)
    converted = {
        key: tuple(value) if typing.get_origin(hints[key]) is tuple else value for key, value in values.items()
    }
    return config_class(**converted)


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-able dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def format_config(config: Any) -> str:
    """One `key: value` line per field, in declaration order, for the start of a log."""
    width = max(len(field.name) for field in dataclasses.fields(config))
    lines = [f"{type(config).__name__}:"]
    for field in dataclasses.fields(config):
        lines.append(f"  {field.name:<{width}}  {getattr(config, field.name)!r}")
    return "\n".join(lines)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two config dicts: {name: (old, new)}."""
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)}
