"""Reading the pictures back: the text of an SVG, the size of a PNG (both also prove the format)."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SVG_TEXT = "{http://www.w3.org/2000/svg}text"


def svg_text(path: Path) -> str:
    """All text of an SVG, one line per <text> element (parsing it proves it is XML)."""
    root = ET.parse(path).getroot()
    return "\n".join("".join(el.itertext()) for el in root.iter(SVG_TEXT))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the PNG header, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])
