"""Variants: a preset with overrides written as ``"base:key=value,key=value"``.

One parser for every place that takes one (``bench quality --variant``,
``bench e2e --baseline``, the quality frontier, and the CLI's checks before
a benchmark spends minutes measuring), so they read a variant alike.
"""

from __future__ import annotations

from amnst.config import Preset, get_preset, parse_layers


def parse_variant(text: str) -> Preset:
    """A variant ``"base:key=value,key=value"``: the base preset with overrides."""
    base, _, settings = text.partition(":")
    overrides = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = parse_layers(value.replace("+", ",")) if key.endswith("_layers") else _scalar(value)
    return get_preset(base).with_overrides(**overrides)


def _scalar(text: str) -> int | float | bool | str:
    """A variant's value: an int, a float, a bool, else the text itself."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
