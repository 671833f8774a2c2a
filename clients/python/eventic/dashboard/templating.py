"""Jinja filters: times, ages and JSON the way the pages show them."""

import json
from datetime import datetime
from urllib.parse import quote


def ts(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else ("" if value is None else str(value))


def age(seconds) -> str:
    if seconds is None:
        return "–"
    s = float(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def to_json(value, indent=None) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str)


def short(text, n: int = 80) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def register_filters(env) -> None:
    env.filters.update(ts=ts, age=age, json=to_json, short=short,
                       url=lambda v: quote(str(v), safe=""))
