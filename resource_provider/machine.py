"""What this machine offers: GPUs (nvidia-smi, else torch), CPU cores, memory and disk.

:func:`detect` never fails: a probe that is missing or errors counts as "none of that", and the
reason is kept in :attr:`Hardware.notes` for the daemon's start-up log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lilypad.chain.offers import Machine

#: How long nvidia-smi may take before it counts as absent.
NVIDIA_SMI_TIMEOUT_S = 10


@dataclass(frozen=True)
class Gpu:
    """One GPU.

    Attributes:
        model: Its name as the driver reports it.
        vram_mb: Its memory in MiB.
        driver: The driver version ("" when unknown).
    """

    model: str
    vram_mb: int
    driver: str = ""


@dataclass(frozen=True)
class Hardware:
    """The machine as detected.

    Attributes:
        gpus: The GPUs found.
        cpus: Logical CPU cores this process may use.
        ram_mb: Physical memory in MiB.
        disk_mb: Free disk where results are written, in MiB.
        notes: Why a probe found nothing (for the log).
    """

    gpus: tuple[Gpu, ...]
    cpus: int
    ram_mb: int
    disk_mb: int
    notes: tuple[str, ...] = field(default=())

    def machine(self, gpus: int | None = None) -> Machine:
        """The offer's machine lanes; ``gpus`` overrides how many GPUs are offered.

        With several GPUs, VRAM per GPU is the smallest one's: a job may land on any of them.
        """
        count = len(self.gpus) if gpus is None else gpus
        vram = min((g.vram_mb for g in self.gpus), default=0) if count else 0
        return Machine(
            gpus=count,
            vram_mb=vram,
            cpu_millis=self.cpus * 1000,
            ram_mb=self.ram_mb,
            disk_mb=self.disk_mb,
        )

    def describe(self) -> str:
        """One line for people."""
        gpus = ", ".join(f"{g.model} ({g.vram_mb} MiB)" for g in self.gpus) or "no GPU"
        return f"{gpus}; {self.cpus} CPU cores, {self.ram_mb} MiB RAM, {self.disk_mb} MiB free disk"


def detect(data_dir: Path) -> Hardware:
    """Probe GPUs, CPU, RAM and the disk holding ``data_dir``."""
    notes: list[str] = []
    gpus = nvidia_smi_gpus(notes)
    if not gpus:
        gpus = torch_gpus(notes)
    return Hardware(
        gpus=tuple(gpus),
        cpus=_cpus(),
        ram_mb=_ram_mb(),
        disk_mb=_disk_mb(data_dir),
        notes=tuple(notes),
    )


def nvidia_smi_gpus(notes: list[str]) -> list[Gpu]:
    """GPUs as ``nvidia-smi`` lists them (empty when it is absent or fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        notes.append("nvidia-smi not found")
        return []
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        out = subprocess.run(
            [exe, query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        notes.append(f"nvidia-smi failed: {exc}")
        return []
    return parse_nvidia_smi(out)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,
    nounits`` output; lines that do not parse are skipped."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        gpus.append(Gpu(model=parts[0], vram_mb=int(parts[1]), driver=parts[2]))
    return gpus


def torch_gpus(notes: list[str]) -> list[Gpu]:
    """GPUs torch sees, when torch is installed and the machine has NVIDIA device nodes."""
    if not Path("/dev/nvidiactl").exists():  # importing torch costs seconds; CUDA needs this node
        notes.append("no NVIDIA device (/dev/nvidiactl)")
        return []
    try:
        import torch
    except ImportError:
        notes.append("torch not installed")
        return []
    if not torch.cuda.is_available():
        notes.append("torch sees no CUDA device")
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(Gpu(model=props.name, vram_mb=props.total_memory // 2**20))
    return gpus


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _ram_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return 0


def _disk_mb(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free // 2**20
