"""Callbacks run when a Record class is defined (the FastAPI apps mount its routes)."""

from __future__ import annotations

from typing import Any, Callable

_listeners: list[Callable[[type], Any]] = []


def on_record_class(listener: Callable[[type], Any]) -> None:
    _listeners.append(listener)


def record_class_defined(cls: type) -> None:
    for listener in list(_listeners):
        listener(cls)
