"""The machine: a one-line description of where a figure was measured, this process's memory,
and which torch device the cloud's training uses."""

from __future__ import annotations

import copy
import os
import platform
from pathlib import Path
from typing import TypeVar

import torch

from chord_fl.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
CPU = torch.device("cpu")
Module = TypeVar("Module", bound=torch.nn.Module)


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
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def memory_mib() -> tuple[float, float] | None:
    """(current, peak) resident memory of this process in MiB, from /proc (None off Linux).
    Not getrusage's ru_maxrss: Linux carries that over from the parent through fork and exec."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    kib = {
        line.split(":")[0]: int(line.split()[1]) for line in lines if line[:5] in ("VmRSS", "VmHWM")
    }
    return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024


def machine_line() -> str:
    info = machine_info()
    threads = info["torch_threads"]
    line = f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({threads} threads)"
    return line + (f", GPU {info['gpu']}" if info.get("gpu") else "")


def torch_device(name: str = "auto") -> torch.device:
    """The cloud's training device: "auto" takes CUDA when there is a GPU, else the CPU. Phones
    (the simulated devices) always run on the CPU."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no GPU (or is a CPU build)")
    return torch.device(name)


def on_device(module: Module, device: torch.device | str) -> Module:
    """`module` itself on the CPU, else a copy on `device` (a name: `torch_device`): the cloud
    trains on a GPU while the frozen model the devices' quantized copies come from stays on the
    CPU."""
    device = torch_device(device) if isinstance(device, str) else device
    return module if device == CPU else copy.deepcopy(module).to(device)
