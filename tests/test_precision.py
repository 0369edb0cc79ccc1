"""precision="auto" picks bf16 only on a CPU with native bf16 arithmetic (emulated bf16 ran ~80x slower)."""
from __future__ import annotations

from expertmesh import precision

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 avx512_vnni\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
NEOVERSE = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert precision.native_bf16(precision.cpu_flags(ZEN4))
    assert precision.native_bf16(precision.cpu_flags(NEOVERSE))
    assert not precision.native_bf16(precision.cpu_flags(AVX2))
    assert precision.cpu_flags("") == set()


def test_auto_resolves_to_fp32_without_native_bf16(monkeypatch):
    precision.bf16_supported.cache_clear()
    flags = precision.cpu_flags(AVX2)
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: flags)
    try:
        assert precision.bf16_supported() is False
        assert precision.use_bf16("auto") is False
        assert precision.use_bf16("bf16") is True          # asked for explicitly: honoured
        assert precision.use_bf16("fp32") is False
    finally:
        precision.bf16_supported.cache_clear()


def test_auto_resolves_to_bf16_with_native_bf16_on_linux(monkeypatch):
    precision.bf16_supported.cache_clear()
    flags = precision.cpu_flags(ZEN4)
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: flags)
    monkeypatch.setattr(precision.platform, "system", lambda: "Linux")
    try:
        assert precision.use_bf16("auto") is True
    finally:
        precision.bf16_supported.cache_clear()
