"""A one-line description of the machine a figure was measured on."""

from __future__ import annotations

import os
import platform

import torch


def machine_info() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }


def machine_line() -> str:
    info = machine_info()
    threads = info["torch_threads"]
    return f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({threads} threads)"
