"""Settings that a command line may give too: each flag is built from its settings
model's field (the variable, its help, its type), so a setting is declared once."""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from app.errors import ConfigError
from app.inputs.settings import describe_error

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def flag(name: str) -> JsonDict:
    """A field's json_schema_extra declaring its flag, --NAME."""
    return {"flag": f"--{name}"}


def flag_of(field: FieldInfo) -> str | None:
    """The flag a field declares (json_schema_extra "flag"), if any."""
    extra = field.json_schema_extra
    flag = extra.get("flag") if isinstance(extra, dict) else None
    return flag if isinstance(flag, str) else None


def add_flags(parser: argparse.ArgumentParser, model: type[BaseSettings]) -> None:
    """One flag per field that declares one, its help naming the variable it
    overrides and the default."""
    for name, field in model.model_fields.items():
        flag = flag_of(field)
        if flag is None:
            continue
        shown = f", {field.default:g}" if isinstance(field.default, float) else ""
        help_text = f"{field.description} ({field.alias}{shown})"
        options: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if field.annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif field.annotation in (int, float, int | None, float | None):
            options["type"] = float if field.annotation in (float, float | None) else int
        parser.add_argument(flag, **options)


def load(model: type[SettingsT], args: argparse.Namespace | None = None) -> SettingsT:
    """`model` from the environment, with the flags given on the command line winning.
    Every problem comes in one ConfigError; a missing setting names its flag too."""
    args = args or argparse.Namespace()
    given: dict[str, Any] = {
        str(field.alias): getattr(args, name)
        for name, field in model.model_fields.items()
        if flag_of(field) is not None and getattr(args, name, None) is not None
    }
    flags = {field.alias: flag_of(field) for field in model.model_fields.values()}
    try:
        return model(**given)
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            name = str((error.get("loc") or ("settings",))[0])
            if error.get("type") == "missing" and flags.get(name):
                errors.append(ConfigError(name, f"not set (or pass {flags[name]})"))
            else:
                errors.append(describe_error(error))
        raise ConfigError.all_of(errors) from None
