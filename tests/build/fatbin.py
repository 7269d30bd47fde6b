"""Which SASS (cubin) and PTX a CUDA library's fatbin holds, read from the ELF's .nv_fatbin section.

CUDA 13's cuobjdump (the only one on PyPI) stops with "Invalid ELF" on the CUDA 12.1 libraries of the
bitsandbytes wheel, so the image tests read the fatbin headers themselves: per entry its kind (1 PTX,
2 ELF/cubin) and the SM it is for. Layout as NVIDIA's fatbinary headers have it (fatbin magic 0xBA55ED50).
"""

from __future__ import annotations

import struct
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
KINDS = {1: "ptx", 2: "sass"}


def _section(data: bytes, wanted: str) -> bytes:
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not a 64-bit ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    for name_off, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", names_at + name_off)
        if data[names_at + name_off:end].decode() == wanted:
            return data[offset:offset + size]
    raise ValueError(f"no {wanted} section")


def fatbin_entries(path: Path) -> list[tuple[str, int]]:
    """[("sass", 80), ("ptx", 90), ...] for every entry of every fatbin in the library."""
    blob = _section(path.read_bytes(), ".nv_fatbin")
    out: list[tuple[str, int]] = []
    pos = 0
    while pos + 16 <= len(blob):
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", blob, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # fatbins are 8-byte aligned; padding between them
            continue
        entry, end = pos + header_size, pos + header_size + fat_size
        while entry + 32 <= end:
            kind, _unknown, entry_header, size = struct.unpack_from("<HHIQ", blob, entry)
            arch, = struct.unpack_from("<I", blob, entry + 28)
            out.append((KINDS.get(kind, f"kind{kind}"), arch))
            entry += entry_header + size
        pos = end
    return out


def sass_arches(path: Path) -> set[int]:
    return {arch for kind, arch in fatbin_entries(path) if kind == "sass"}
