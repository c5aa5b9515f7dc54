"""The settings' building blocks: the strict base model with its range rules, the error a profile
that cannot run raises, one line per problem, and the deep merge of overrides."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class SettingsError(ValueError):
    """A settings profile that cannot run: the message names each setting (and path) at fault."""


# Range rules: (operator, bound). Written as a table per section, beside the fields, so that every
# out-of-range value of a profile is reported at once, before a run starts.
Range = tuple[Literal[">", ">=", "<", "<="], float]
_OPS = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silent default
    ranges: ClassVar[dict[str, tuple[Range, ...]]] = {}

    @model_validator(mode="after")
    def _in_range(self):
        errors = []
        rules: dict[str, tuple[Range, ...]] = {}
        for cls in reversed(type(self).__mro__):  # a subclass adds to (or overrides) its parent's rules
            rules.update(vars(cls).get("ranges", {}))
        for name, checks in rules.items():
            value = getattr(self, name)
            if value is None:  # optional settings (None = off / automatic) have no range
                continue
            for op, bound in checks:
                if not _OPS[op](float(value), float(bound)):
                    errors.append(f"{name} must be {op} {bound:g}, got {value!r}")
        if errors:
            raise ValueError("\n".join(errors))
        return self


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def format_errors(exc: ValidationError) -> str:
    """One line per problem, each starting with the setting's dotted name."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"])
        if err["type"] != "value_error":  # type, literal, missing, extra key: pydantic names the field
            lines.append(f"  {where or 'settings'}: {err['msg']} (got {err.get('input')!r:.80})")
            continue
        for part in err["msg"].removeprefix("Value error, ").split("\n"):
            # a section's rule names its own field ("steps must be ..."); other rules name the full path
            named = "." in part.split(" ", 1)[0] or not where
            lines.append(f"  {part}" if named else f"  {where}.{part}")
    return "\n".join(lines)
