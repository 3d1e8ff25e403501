"""The CPU's integer-arithmetic capabilities, detected at run time (int8 kernel and rounding choices).

onnxruntime's x86 int8 kernels differ by instruction set: without VNNI (AVX2 only), u8 x s8
products are added in saturating int16 pairs (``vpmaddubsw``), so 8-bit weights can overflow and
7-bit weights (``reduce-range``) are exact; with AVX-512 VNNI, AVX-VNNI or AMX (``vpdpbusd`` /
tile products into int32) and on ARM with the dot-product extension, nothing saturates. The
profile is read from ``/proc/cpuinfo`` on Linux; elsewhere only the architecture is known, and an
x86 CPU is taken as AVX2 without VNNI (the choice that is exact everywhere).
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from pathlib import Path
from typing import Literal

__all__ = ["CPU_CHOICES", "CpuProfile", "detect", "profile"]

CpuChoice = Literal["auto", "avx2", "vnni"]
CPU_CHOICES: tuple[CpuChoice, ...] = ("auto", "avx2", "vnni")
_CPUINFO = Path("/proc/cpuinfo")


@dataclasses.dataclass(frozen=True)
class CpuProfile:
    """What the int8 decisions read about one CPU.

    Attributes:
        model: The CPU's model name (``"unknown"`` when the OS does not say).
        avx2: x86 AVX2 (the baseline of onnxruntime's x86 int8 kernels).
        avx512_vnni: AVX-512 VNNI (``vpdpbusd`` on 512-bit registers).
        avx_vnni: AVX-VNNI (the same on 256-bit registers).
        amx_int8: AMX tile int8 products.
        arm_dotprod: ARM ``sdot``/``udot`` (``asimddp``).
        source: Where the profile came from: ``cpuinfo``, ``platform`` or ``forced:<choice>``.
    """

    model: str
    avx2: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    amx_int8: bool = False
    arm_dotprod: bool = False
    source: str = "cpuinfo"

    @property
    def vnni(self) -> bool:
        """Whether int8 dot products accumulate in int32 without int16 saturation."""
        return self.avx512_vnni or self.avx_vnni or self.amx_int8 or self.arm_dotprod

    @property
    def kind(self) -> str:
        """``vnni`` or ``avx2``: the decision path the quantizer takes on this CPU."""
        return "vnni" if self.vnni else "avx2"

    def flags(self) -> list[str]:
        """The int8-relevant flags that are set, in a fixed order."""
        names = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8", "arm_dotprod")
        return [name for name in names if getattr(self, name)]

    def to_json(self) -> dict[str, str | list[str]]:
        """The report's ``cpu`` field."""
        return {"model": self.model, "kind": self.kind, "flags": self.flags(), "source": self.source}


def parse_cpuinfo(text: str) -> CpuProfile:
    """The profile described by the text of ``/proc/cpuinfo`` (its first processor)."""
    model = "unknown"
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model == "unknown":
            model = value.strip() or model
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return CpuProfile(
        model=model,
        avx2="avx2" in flags,
        avx512_vnni="avx512_vnni" in flags,
        avx_vnni="avx_vnni" in flags,
        amx_int8="amx_int8" in flags,
        arm_dotprod="asimddp" in flags,
    )


@functools.lru_cache(maxsize=1)
def detect() -> CpuProfile:
    """This machine's profile (read once per process)."""
    try:
        return parse_cpuinfo(_CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        machine = platform.machine().lower()
        arm = machine in ("arm64", "aarch64")
        # Apple silicon and every ARMv8.2+ server core have the dot-product extension.
        return CpuProfile(model=platform.processor() or machine or "unknown", arm_dotprod=arm, source="platform")


def profile(choice: CpuChoice = "auto") -> CpuProfile:
    """The profile to decide for: this machine's (``auto``), or a forced AVX2 / VNNI x86 CPU."""
    if choice == "auto":
        return detect()
    if choice == "avx2":
        return CpuProfile(model="forced AVX2 (no VNNI)", avx2=True, source="forced:avx2")
    if choice == "vnni":
        return CpuProfile(model="forced AVX-512 VNNI", avx2=True, avx512_vnni=True, source="forced:vnni")
    raise ValueError(f"cpu must be one of {', '.join(CPU_CHOICES)}, got {choice!r}")
