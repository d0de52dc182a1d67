"""Command-line flags: spelled as the ecosystem spells them, with help carried by the option itself.

torchvision's references write `--data-path`, our dataclass fields `--data_path`; every command
accepts both, so a flag copied from either works. `option` is a dataclass field holding its own
`--help` text (training/config.py makes flags of such fields).
"""

import argparse
import dataclasses
from typing import Any


def option(default: Any, help: str, *, switch: bool = False) -> Any:  # noqa: A002 - argparse's word for it
    """A dataclass field with its help text, one whole sentence; a dataclass default is copied per instance.

    switch=True marks a str field holding "auto", "true" or "false" whose flag also stands alone
    (`--channels-last` gives "true", `--no-channels-last` "false"), as a bool field's does."""
    metadata = {"help": help, "switch": switch}
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: dataclasses.replace(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def with_default(owner: type, name: str, default: Any) -> Any:
    """The dataclass `owner`'s field `name` again with another default, for a subclass to redeclare: the help
    and the switch marking are the owner's, so the text is written once."""
    metadata = {field.name: field.metadata for field in dataclasses.fields(owner)}[name]
    return option(default, metadata["help"], switch=metadata["switch"])


def spellings(flag: str) -> list[str]:
    """`--data_path` -> ["--data_path", "--data-path"] (the given spelling first); other flags unchanged."""
    if not flag.startswith("--"):
        return [flag]
    name = flag[2:]
    others = [f"--{name.replace('_', '-')}", f"--{name.replace('-', '_')}"]
    return [flag] + [other for other in dict.fromkeys(others) if other != flag]


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser that registers every long flag in both spellings (one dest, one help line)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        if names and all(name.startswith("-") for name in names):
            long = [name for name in names if name.startswith("--")]
            if long and "dest" not in kwargs:
                kwargs["dest"] = long[0][2:].replace("-", "_")
            names = tuple(dict.fromkeys(spelling for name in names for spelling in spellings(name)))
        return super().add_argument(*names, **kwargs)
