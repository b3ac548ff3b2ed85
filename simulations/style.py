"""One colour and one marker per method, in every figure of the project (strategies, and the
benchmarks' reference points)."""

from __future__ import annotations

# One colour per method in every figure (strategies, and the benchmarks' reference points).
METHOD_COLOURS = {
    "fp32": "#000000",
    "uniform": "#e69f00",
    "random": "#999999",
    "global": "#56b4e9",
    "global-target": "#a6cee3",
    "chord": "#d55e00",
    "init": "#f4a582",
    "chord-sens": "#cc79a7",
    "init-sens": "#f1b6da",
    "chord-relax": "#8073ac",
    "init-relax": "#b2abd2",
    "chord-no-element": "#b2182b",
    "chord-no-filter": "#762a83",
    "chord-no-layer": "#8c510a",
    "window": "#009e73",
    "oracle": "#0072b2",
    "fedavg": "#4d4d4d",
    "fedavg-uniform": "#f0e442",
}
METHOD_MARKERS = {
    "fp32": "s",
    "uniform": "D",
    "random": "x",
    "global": "^",
    "chord": "o",
    "chord-sens": "P",
    "chord-relax": "X",
    "chord-no-element": "v",
    "chord-no-filter": "<",
    "chord-no-layer": ">",
    "fedavg": "*",
    "fedavg-uniform": "h",
}


def method_colour(name: str) -> str:
    return METHOD_COLOURS.get(name.split(" ")[0], "#bababa")


def method_marker(name: str) -> str:
    return METHOD_MARKERS.get(name.split(" ")[0], "o")
