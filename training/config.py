"""Training configs are dataclasses; this turns one into command-line flags and back.

Every field becomes a flag of its own type, spelled `--data_path` or `--data-path`; bool flags (and
"auto"/"true"/"false" fields marked `switch`) take a value or stand alone (`--channels-last`,
`--no-channels-last`); tuples take several values. A
field whose type is itself a dataclass (the detector's `DetectorOptions`) contributes its fields as
flags of their own names. Help comes from each field's metadata (`backbone.flags.option`), whole.
Named presets ("recipes") replace the defaults before the flags apply, and the result is printed at
start and stored in every checkpoint as a plain dict. Nothing is evaluated or interpolated: a value
is parsed by its field's type and nothing else.
"""

import argparse
import dataclasses
import json
import logging
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from backbone.command_logging import add_logging_flags, log_level, setup_logging
from backbone.flags import FlagParser, spellings

ConfigT = TypeVar("ConfigT")
# The logger whose level decides which of a run's report lines show (training/run_log.py's `report`)
REPORT_LOGGER = "training.report"

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
        item_types = typing.get_args(annotation)
        fixed_length = Ellipsis not in item_types
        return {**_field_flag_kwargs(item_types[0]), "nargs": len(item_types) if fixed_length else "*"}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"config fields must have one type, got {annotation}")
    if annotation is bool:
        return {"type": parse_bool, "metavar": "{true,false}"}
    if annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(f"config field type {annotation} is not supported (bool, int, float, str, tuple[...])")


def _fields_in_reading_order(config_class: type) -> list[dataclasses.Field]:
    """The config's own fields, then those it inherits (`training.run_options.RunOptions`): dataclasses put
    inherited fields first, but --help and the start-of-run printout read best from the data to the output folder."""
    inherited = {
        field.name
        for base in config_class.__mro__[1:]
        if dataclasses.is_dataclass(base)
        for field in dataclasses.fields(base)
    }
    fields = dataclasses.fields(config_class)
    return [f for f in fields if f.name not in inherited] + [f for f in fields if f.name in inherited]


def _nested_classes(config_class: type) -> dict[str, type]:
    """{field name: dataclass type} for the fields that hold a whole dataclass (e.g. DetectorOptions)."""
    hints = typing.get_type_hints(config_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_class) if dataclasses.is_dataclass(hints[f.name])}


def _flag_fields(config_class: type) -> list[tuple[dataclasses.Field, Any, Any]]:
    """(field, type, default) of every flag: the config's own fields, a nested dataclass's in its place."""
    hints = typing.get_type_hints(config_class)
    nested = _nested_classes(config_class)
    defaults = config_class()
    result = []
    for field in _fields_in_reading_order(config_class):
        if field.name in nested:
            inner_hints = typing.get_type_hints(nested[field.name])
            inner_default = getattr(defaults, field.name)
            for inner in dataclasses.fields(nested[field.name]):
                result.append((inner, inner_hints[inner.name], getattr(inner_default, inner.name)))
        else:
            result.append((field, hints[field.name], getattr(defaults, field.name)))
    return result


def flag_help(config_class: type) -> dict[str, str]:
    """{flag name: its help text without the default} for every flag of `config_class`."""
    return {field.name: field.metadata.get("help", "") for field, _, _ in _flag_fields(config_class)}


def build_parser(
    config_class: type, *, description: str = "", recipes: Mapping[str, Mapping] | None = None
) -> argparse.ArgumentParser:
    """An ArgumentParser with one `--field value` flag per dataclass field (plus `--recipe`)."""
    parser = FlagParser(description=description)
    if recipes:
        parser.add_argument("--recipe", choices=sorted(recipes), help="A named preset applied before the other flags.")
    for field, annotation, default in _flag_fields(config_class):
        help_text = f"{field.metadata.get('help', '')} (default: {default!r})"
        kwargs = _field_flag_kwargs(annotation)
        on, off = (True, False) if annotation is bool else ("true", "false")
        switch = annotation is bool or field.metadata.get("switch", False)
        if switch:
            kwargs.update(nargs="?", const=on)
            hyphenated = field.name.replace("_", "-")
            help_text += f"; --{hyphenated} alone means {str(on).lower()}, --no-{hyphenated} {str(off).lower()}"
        parser.add_argument(f"--{field.name}", default=None, help=help_text, **kwargs)
        if switch:
            parser.add_argument(
                *spellings(f"--no-{field.name}"),
                dest=field.name,
                action="store_const",
                const=off,
                help=argparse.SUPPRESS,
            )
    add_logging_flags(parser)  # how much the run reports; not a setting of the run (no field, not in checkpoints)
    return parser


def parse_config(
    config_class: type[ConfigT],
    argv: Sequence[str] | None = None,
    *,
    description: str = "",
    recipes: Mapping[str, Mapping[str, Any]] | None = None,
) -> ConfigT:
    """Defaults, then the chosen recipe's values, then the flags given; unknown flags are an error. --quiet and
    --verbose are parse_command's."""
    return _parse(config_class, argv, description=description, recipes=recipes)[0]


def parse_command(
    config_class: type[ConfigT],
    argv: Sequence[str] | None = None,
    *,
    description: str = "",
    recipes: Mapping[str, Mapping[str, Any]] | None = None,
) -> ConfigT:
    """`parse_config` for a training script's command line, which also sets up the one logging of every command
    (backbone/command_logging.py) at --quiet / --verbose's level, and the run's report (training/run_log.py) at
    the same level."""
    config, quiet, verbose = _parse(config_class, argv, description=description, recipes=recipes)
    setup_logging(quiet=quiet, verbose=verbose)
    logging.getLogger(REPORT_LOGGER).setLevel(log_level(quiet=quiet, verbose=verbose))
    return config


def _parse(
    config_class: type[ConfigT], argv: Sequence[str] | None, *, description: str,
    recipes: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[ConfigT, bool, bool]:  # fmt: skip
    parser = build_parser(config_class, description=description, recipes=recipes)
    args = vars(parser.parse_args(argv))
    quiet, verbose = args.pop("quiet"), args.pop("verbose")
    values: dict[str, Any] = {}
    recipe = args.pop("recipe", None)
    if recipe is not None:
        values.update(recipes[recipe])
    values.update({key: value for key, value in args.items() if value is not None})
    return make_config(config_class, values), quiet, verbose


def _typed(config_class: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Lists (a JSON round trip) become tuples again where the field is a tuple."""
    hints = typing.get_type_hints(config_class)
    return {
        key: tuple(value) if typing.get_origin(hints[key]) is tuple and value is not None else value
        for key, value in values.items()
    }


def make_config(config_class: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
    """Build a config from a dict: flags, a recipe, or one stored in a checkpoint (nested or flat).

    A nested dataclass field takes a dict or an instance under its own name, and its fields may
    also be given at the top level: the flat form of recipes and of checkpoints written before
    the nesting.
    """
    names = {field.name for field in dataclasses.fields(config_class)}
    nested = _nested_classes(config_class)
    inner_names = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in nested.items()}
    unknown = sorted(key for key in values if key not in names and not any(key in n for n in inner_names.values()))
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} fields: {', '.join(unknown)}")
    own = {key: value for key, value in values.items() if key in names and key not in nested}
    converted = _typed(config_class, own)
    defaults = config_class()
    for name, cls in nested.items():
        given = values.get(name, {})
        given = dataclasses.asdict(given) if dataclasses.is_dataclass(given) else dict(given)
        given.update({key: value for key, value in values.items() if key in inner_names[name]})
        unknown_inner = sorted(set(given) - inner_names[name])
        if unknown_inner:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown_inner)}")
        converted[name] = dataclasses.replace(getattr(defaults, name), **_typed(cls, given))
    return config_class(**converted)


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-able dict of a config (tuples become lists, a nested dataclass a nested dict)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _flat_items(config: Any) -> list[tuple[str, Any]]:
    items = []
    for field in _fields_in_reading_order(type(config)):
        value = getattr(config, field.name)
        items += _flat_items(value) if dataclasses.is_dataclass(value) else [(field.name, value)]
    return items


def format_config(config: Any) -> str:
    """One `key: value` line per flag, in declaration order, for the start of a log."""
    items = _flat_items(config)
    width = max(len(name) for name, _ in items)
    return "\n".join([f"{type(config).__name__}:"] + [f"  {name:<{width}}  {value!r}" for name, value in items])


def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flatten(value) if isinstance(value, Mapping) else {key: value})
    return flat


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Settings both config dicts hold (nested or flat) whose values differ: {name: (old, new)}.

    A setting only one of them knows (added to the code since the checkpoint) is not a change."""
    old, new = _flatten(old), _flatten(new)
    return {key: (old[key], new[key]) for key in sorted(set(old) & set(new)) if old[key] != new[key]}
