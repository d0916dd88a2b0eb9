"""Helpers for devices with 32-bit registers in a 4 KiB MMIO window (the PrimeCells)."""
from __future__ import annotations


def in_window(offset: int, window: int) -> bool:
    return 0 <= offset < window


def sub_word(value: int, offset: int, size: int) -> int:
    """The bytes of 32-bit register `value` that a `size`-byte read at `offset` sees.

    A read wider than the register returns the register zero-extended; a hostile size (0 or
    negative) reads nothing.
    """
    width = max(0, min(size, 4 - (offset & 3)))
    return (value >> (8 * (offset & 3))) & ((1 << (8 * width)) - 1)
