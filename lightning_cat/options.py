"""Options are declared once, in a signature: this checks values against its annotations.

A module's (or dataclass') signature is its config schema: LightningCLI rejects a bad YAML value
at parse time from the same annotations. :func:`check_arguments` applies them to direct Python
calls too, before anything expensive happens: ``Literal`` choices (also inside ``Optional`` and
``list``) and plain ``bool`` / ``int`` / ``float`` / ``str`` types. Errors name the owner, the
option and the allowed values. Ranges and cross-option rules stay with the owner.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

__all__ = ["check_arguments", "choices"]


def choices(literal: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` type (what a tuple of choices would repeat)."""
    if typing.get_origin(literal) is not Literal:
        raise TypeError(f"expected a Literal type, got {literal!r}")
    return typing.get_args(literal)


def _problem(annotation: Any, value: Any) -> str | None:
    """What ``value`` should be to match ``annotation``; ``None`` when it does (or cannot be told)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        return None if value in allowed else f"one of {list(allowed)}"
    if origin in (Union, types.UnionType):
        members = typing.get_args(annotation)
        if value is None and type(None) in members:
            return None
        problems = [_problem(member, value) for member in members if member is not type(None)]
        return None if any(p is None for p in problems) else " or ".join(p for p in problems if p)
    if origin is list and isinstance(value, list | tuple):
        (item,) = typing.get_args(annotation) or (Any,)
        problems = [_problem(item, entry) for entry in value]
        return next((f"a list of {p}" for p in problems if p), None)
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if annotation is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    if annotation is str:
        return None if isinstance(value, str) else "a string"
    return None


def check_arguments(owner: str, function: Callable[..., Any], values: Mapping[str, Any]) -> None:
    """Check ``values`` against the annotations of ``function``'s parameters.

    Raises:
        ValueError: ``"{owner}: {option}={value!r} is not {what}"`` for the first mismatch.
    """
    hints = typing.get_type_hints(function)
    for name in inspect.signature(function).parameters:
        if name in hints and name in values:
            problem = _problem(hints[name], values[name])
            if problem is not None:
                raise ValueError(f"{owner}: {name}={values[name]!r} is not {problem}")
