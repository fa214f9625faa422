"""Preset plumbing shared by the model families: a named size fills every field not set explicitly."""

from __future__ import annotations

from typing import Any

SIZES = ("debug", "mini", "small", "base")


def fill_from_preset(data: Any, presets: dict[str, dict[str, Any]]) -> Any:
    """Merge `presets[data['size']]` under the explicitly given keys (explicit keys win).

    Runs before field validation, so an unknown size is reported here with the allowed names.
    """
    if not isinstance(data, dict):
        return data
    size = data.get("size", "mini")
    if size not in presets:
        # leave it to the Literal check on `size`, which names the allowed values
        return data
    return {**presets[size], **data}
