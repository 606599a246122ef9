"""Colour names and their RGB values.

The Ayna dataset uses 8 names with exact RGB values; its "green" is CSS "lime" (0, 255, 0), so Ayna's table wins
over Pillow's CSS table where the two disagree. Any other name Pillow knows and any `#rrggbb` string also resolve.
"""

from __future__ import annotations

import re

from PIL import ImageColor

from polycolor.errors import PolycolorError

AYNA_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "orange": (255, 165, 0),
    "purple": (128, 0, 128),
}

# The 8 Ayna shapes: the names the generator draws and the words data file names are matched against.
SHAPES: tuple[str, ...] = ("triangle", "square", "pentagon", "hexagon", "octagon", "circle", "star", "diamond")

_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def canonical_colour(colour: str) -> str:
    """The form a colour is stored and looked up under: names lower-cased, hex as lower-case `#rrggbb`."""
    return colour.strip().lower()


def resolve_colour(colour: str) -> tuple[int, int, int]:
    """RGB (0..255) of a colour name or `#rrggbb`; raises PolycolorError for anything else."""
    if not isinstance(colour, str) or not colour.strip():
        raise PolycolorError(f"colour must be a name or #rrggbb, got {colour!r}")
    key = canonical_colour(colour)
    if key in AYNA_COLOURS:
        return AYNA_COLOURS[key]
    if key.startswith("#") and not _HEX.match(key):
        raise PolycolorError(f"colour {colour!r} is not of the form #rrggbb")
    try:
        rgb = ImageColor.getrgb(key)
    except ValueError:
        raise PolycolorError(
            f"unknown colour {colour!r}: use one of {', '.join(AYNA_COLOURS)}, another CSS colour name, or #rrggbb"
        ) from None
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def rgb_to_hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
