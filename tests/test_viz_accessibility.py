"""Figures a colour-blind student can read: colour maps from a short list, every stored figure titled."""

from __future__ import annotations

import re

from conftest import ROOT

# Sequential maps of one hue, perceptually uniform ones, greys, and the qualitative tab10 (Tableau's,
# designed to stay distinguishable under the common colour-vision deficiencies). "turbo" only where each
# colour also carries a printed label (pixel_colours: every pixel shows its index).
ALLOWED = {"viridis", "cividis", "Blues", "Oranges", "Greys", "gray_r", "tab10"}
LABELLED = {"turbo": "def pixel_colours"}


def test_colour_maps_are_readable_without_full_colour_vision():
    for path in sorted((ROOT / "course_lib" / "viz").glob("*.py")):
        text = path.read_text()
        for name in re.findall(r"""(?:get_cmap\(|cmap=)["']([A-Za-z0-9_]+)["']""", text):
            if name in LABELLED:
                assert LABELLED[name] in text, f"{path.name}: {name!r} outside the labelled use it is allowed for"
                continue
            assert name in ALLOWED, (f"{path.name} uses the colour map {name!r}: pick one of {sorted(ALLOWED)} "
                                     f"(rainbow and red-green maps lose their meaning for colour-blind readers)")
