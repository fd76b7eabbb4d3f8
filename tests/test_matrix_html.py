"""``matrix --format html`` in a real headless browser (Debian's chromium, listed in
scripts/deps/browser.apt): it renders, logs no console message, and its screenshot shows the
verdict colours.

The README's picture, docs/matrix-html.png, is the screenshot of ``readme_fleet``;
``--regenerate-golden`` rewrites it.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from psci_hook.status import ExitStatus
from tests.helpers import REPO
from tests.test_fleet import BUNDLED, PROBED, run

CHROMIUM = "chromium"
SCREENSHOT = REPO / "docs" / "matrix-html.png"
# A console message, as chromium logs it with --enable-logging=stderr: "...:INFO:CONSOLE:1] ..."
# (older releases: "INFO:CONSOLE(1)]").
CONSOLE_RE = re.compile(r":CONSOLE(?::\d+|\(\d+\))\]")
# The verdict colours of psci_hook/commands/matrix.py's stylesheet.
COLOURS = {"allow": (0xA5, 0xD6, 0xA7), "warn": (0xFF, 0xF5, 0x9D),
           "oneway": (0x90, 0xCA, 0xF9), "veto": (0xEF, 0x9A, 0x9A)}


def chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    binary = shutil.which(CHROMIUM)
    assert binary, "chromium is not installed: scripts/deps/browser.apt lists it"
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
         *extra, url],
        capture_output=True, timeout=120, check=False, cwd=tmp)


def console_messages(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode(errors="replace").splitlines()
            if CONSOLE_RE.search(line)]


def png_pixels(data: bytes) -> tuple[int, int, list[bytes], int]:
    """Width, height, unfiltered rows and bytes per pixel of an 8-bit RGB(A) PNG (zlib only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up = prev[x]
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                corner = prev[x - bpp] if x >= bpp else 0
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc
                                      else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows, bpp


def colour_counts(rows: list[bytes], bpp: int) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    for row in rows:
        for x in range(0, len(row), bpp):
            pixel = tuple(row[x:x + 3])
            counts[pixel] = counts.get(pixel, 0) + 1
    return counts


def readme_fleet(tmp: Path) -> list[str]:
    """The README's example: a small fleet of real profiles, some hosts identical."""
    hosts = {"host-01": PROBED["6.1__a57"], "host-02": PROBED["6.1__a57"],
             "host-03": PROBED["6.1__a57"], "host-04": PROBED["6.12__a57"],
             "host-05": PROBED["6.12__a57"], "host-06": PROBED["7.2__a57"],
             "host-07": BUNDLED["6.1__a76"], "host-08": PROBED["5.10__a57"]}
    directory = tmp / "fleet"
    directory.mkdir()
    for host, profile in hosts.items():
        data = json.loads(profile.read_text())
        data["hostname"] = host
        (directory / f"{host}.json").write_text(json.dumps(data))
    return [str(directory / f"{h}.json") for h in hosts]


@pytest.mark.slow
def test_the_console_check_sees_what_the_page_policy_refuses(tmp_path: Path) -> None:
    """The detector's positive control: a page under the matrix's Content-Security-Policy that
    asks for a network image gets a console message."""
    page = tmp_path / "bad.html"
    status, out, _ = run("matrix", str(BUNDLED["6.1__a57"]), "--format", "html")
    assert status == ExitStatus.OK
    page.write_text(out.replace("</body>", '<img src="http://127.0.0.1:9/x.png"></body>'))
    proc = chromium(page.as_uri(), tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    messages = console_messages(proc.stderr)
    assert messages and any("Content Security Policy" in m for m in messages), messages


@pytest.mark.slow
def test_the_html_matrix_renders_without_console_messages_and_is_not_blank(
        tmp_path: Path, regenerate: bool) -> None:
    status, out, err = run("matrix", *readme_fleet(tmp_path), "--format", "html")
    assert status == ExitStatus.OK and err == ""
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(|@import|<script""", out)
    assert "Content-Security-Policy" in out
    page = tmp_path / "matrix.html"
    page.write_text(out)

    dom = chromium(page.as_uri(), tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    assert console_messages(dom.stderr) == []
    rendered = dom.stdout.decode()
    # 8 hosts, 5 distinct profiles: one header row and 5 rows of 5 cells.
    assert rendered.count("<tr>") == 6 and rendered.count("<td ") == 25
    assert "host-01 (+2)" in rendered and "host-04 (+1)" in rendered
    for kind in COLOURS:
        assert f'class="{kind}"' in rendered, kind
    assert "Reasons" in rendered and "PSCI_UNSUPPORTED" in rendered

    shot = tmp_path / "matrix.png"
    proc = chromium(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=900,560")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert console_messages(proc.stderr) == []
    width, height, rows, bpp = png_pixels(shot.read_bytes())
    assert (width, height) == (900, 560)
    counts = colour_counts(rows, bpp)
    assert len(counts) > 50, "blank or nearly blank screenshot"
    assert max(counts.values()) < 0.9 * width * height  # not one flat colour
    for kind, colour in COLOURS.items():  # every verdict colour, each over whole cells
        assert counts.get(colour, 0) > 500, (kind, counts.get(colour, 0))
    if regenerate:
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_the_readme_picture_is_a_real_screenshot() -> None:
    width, height, rows, bpp = png_pixels(SCREENSHOT.read_bytes())
    counts = colour_counts(rows, bpp)
    assert width >= 600 and height >= 300 and len(counts) > 50
    assert all(counts.get(c, 0) > 500 for c in COLOURS.values())
    assert "docs/matrix-html.png" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("profiles", [[], ["6.1__a57", "6.12__a57"]])
def test_every_profile_is_one_row_unless_identical(profiles: list[str]) -> None:
    args = [str(BUNDLED[p]) for p in profiles]
    _, out, _ = run("matrix", *args, "--format", "html")
    expected = len(profiles) or len(BUNDLED)
    assert out.count("<tr>") == expected + 1 and out.count("<td ") == expected ** 2


def test_names_are_escaped(tmp_path: Path) -> None:
    odd = tmp_path / 'a&b<i>"x".json'
    odd.write_text(BUNDLED["6.1__a57"].read_text())
    status, out, _ = run("matrix", str(odd), str(BUNDLED["6.12__a57"]), "--format", "html")
    assert status == ExitStatus.OK
    assert "a&amp;b&lt;i&gt;&quot;x&quot;" in out and "<i>" not in out
