"""Draw idp's icons: static/favicon.svg, static/favicon.ico (32 px) and the PNG app icons under static/icons/
(apple-touch-icon 180 px, web app manifest 192 and 512 px), committed as files.

Run once after changing the design: ``python tests/make_icons.py``; tests/test_branding.py checks that the
committed files are what it draws. Standard library only (zlib for PNG), so no
image library becomes a dependency for a handful of files. An operator replaces them with a theme folder
(IDP_THEME_DIR/static/ files of the same names), not by running this.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "static"
ACCENT = (0x0B, 0x5C, 0xAD)  # --accent of static/css/idp.css
WHITE = (0xFF, 0xFF, 0xFF)
SAMPLES = 4  # per axis: 16 samples a pixel smooth the edges

# The design on a unit square: a rounded square in the accent colour with a white keyhole.
CORNER = 0.2
HOLE_CENTRE, HOLE_RADIUS = (0.5, 0.4), 0.15
SLOT_TOP, SLOT_BOTTOM, SLOT_TOP_HALF, SLOT_BOTTOM_HALF = 0.45, 0.78, 0.06, 0.11

SLOT = [(0.5 - SLOT_TOP_HALF, SLOT_TOP), (0.5 + SLOT_TOP_HALF, SLOT_TOP), (0.5 + SLOT_BOTTOM_HALF, SLOT_BOTTOM),
        (0.5 - SLOT_BOTTOM_HALF, SLOT_BOTTOM)]
SVG = f"""<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100">
<rect width="100" height="100" rx="{CORNER * 100:g}" fill="#{bytes(ACCENT).hex()}"/>
<circle cx="{HOLE_CENTRE[0] * 100:g}" cy="{HOLE_CENTRE[1] * 100:g}" r="{HOLE_RADIUS * 100:g}" fill="#fff"/>
<polygon points="{" ".join(f"{x * 100:g},{y * 100:g}" for x, y in SLOT)}" fill="#fff"/>
</svg>
"""


def _in_square(x: float, y: float, corner: float) -> bool:
    if corner <= 0:
        return True
    cx = min(max(x, corner), 1 - corner)
    cy = min(max(y, corner), 1 - corner)
    return (x - cx) ** 2 + (y - cy) ** 2 <= corner ** 2


def _in_keyhole(x: float, y: float) -> bool:
    if (x - HOLE_CENTRE[0]) ** 2 + (y - HOLE_CENTRE[1]) ** 2 <= HOLE_RADIUS ** 2:
        return True
    if SLOT_TOP <= y <= SLOT_BOTTOM:
        t = (y - SLOT_TOP) / (SLOT_BOTTOM - SLOT_TOP)
        return abs(x - 0.5) <= SLOT_TOP_HALF + t * (SLOT_BOTTOM_HALF - SLOT_TOP_HALF)
    return False


def draw(size: int, corner: float = CORNER) -> bytes:
    """RGBA rows of the icon at ``size`` pixels square (``corner`` 0: full bleed, as iOS rounds it itself)."""
    rows = bytearray()
    step = 1 / (size * SAMPLES)
    for py in range(size):
        rows.append(0)  # PNG filter type: none
        for px in range(size):
            inside = white = 0
            for sy in range(SAMPLES):
                y = (py * SAMPLES + sy + 0.5) * step
                for sx in range(SAMPLES):
                    x = (px * SAMPLES + sx + 0.5) * step
                    if _in_square(x, y, corner):
                        inside += 1
                        white += _in_keyhole(x, y)
            total = SAMPLES * SAMPLES
            if not inside:
                rows += b"\0\0\0\0"
                continue
            share = white / inside
            rows += bytes(round(a * (1 - share) + b * share) for a, b in zip(ACCENT, WHITE, strict=True))
            rows.append(round(255 * inside / total))
    return bytes(rows)


def png(size: int, corner: float = CORNER) -> bytes:
    """A PNG file (8-bit RGBA) of the icon."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(draw(size, corner), 9))
            + chunk(b"IEND", b""))


def ico(image: bytes, size: int) -> bytes:
    """An ICO file holding one PNG image (allowed since Windows Vista; every current browser reads it)."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", size, size, 0, 0, 1, 32, len(image), 22) + image


def icons() -> dict[str, bytes]:
    """Every icon file, by its path under static/."""
    return {"favicon.svg": SVG.encode(), "favicon.ico": ico(png(32), 32),
            "icons/apple-touch-icon.png": png(180, corner=0),
            **{f"icons/icon-{size}.png": png(size) for size in (192, 512)}}


def main() -> None:
    (STATIC / "icons").mkdir(exist_ok=True)
    for name, content in icons().items():
        (STATIC / name).write_bytes(content)


if __name__ == "__main__":
    main()
