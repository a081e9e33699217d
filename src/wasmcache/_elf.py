"""Just enough ELF64 to find one named section in a `.cwasm` file.

Wasmtime's serialized modules are ELF files; the `.wasmtime.engine` section records the
engine that compiled them (version, target, Cranelift flags, tunables, wasm features).
The reader works on bytes or on an open file descriptor (reading only the headers), and
raises `ValueError` for anything malformed: it is fed files we did not write.
"""

from __future__ import annotations

import os
import struct
from typing import Final

ENGINE_SECTION: Final = ".wasmtime.engine"

_ELF_MAGIC: Final = b"\x7fELF"
_ELFCLASS64: Final = 2
_HEADER_SIZE: Final = 64
_SECTION_HEADER_SIZE: Final = 64
_MAX_SECTIONS: Final = 4096
_MAX_SHSTRTAB: Final = 1 << 20
_MAX_SECTION: Final = 64 << 20


def _read_at(source: bytes | bytearray | memoryview | int, offset: int, size: int) -> bytes:
    data = os.pread(source, size, offset) if isinstance(source, int) else bytes(source[offset : offset + size])
    if len(data) != size:
        raise ValueError(f"truncated ELF file: wanted {size} bytes at offset {offset}")
    return data


def is_elf(head: bytes) -> bool:
    return head[:4] == _ELF_MAGIC


def find_section(source: bytes | bytearray | memoryview | int, name: str) -> bytes:
    """Return the contents of section `name` of the ELF64 file in `source` (bytes or an fd)."""
    head = os.pread(source, _HEADER_SIZE, 0) if isinstance(source, int) else bytes(source[:_HEADER_SIZE])
    if not is_elf(head):
        raise ValueError("not an ELF file (a Wasmtime .cwasm starts with \\x7fELF)")
    header = _read_at(source, 0, _HEADER_SIZE)
    if header[4] != _ELFCLASS64:
        raise ValueError("not a 64-bit ELF file")
    endian = {1: "<", 2: ">"}.get(header[5])
    if endian is None:
        raise ValueError("ELF header has an unknown byte order")
    (shoff,) = struct.unpack_from(endian + "Q", header, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", header, 0x3A)
    if shentsize != _SECTION_HEADER_SIZE or not 0 < shnum <= _MAX_SECTIONS or shstrndx >= shnum:
        raise ValueError("ELF section header table is malformed")
    table = _read_at(source, shoff, shnum * shentsize)
    sections = [
        struct.unpack_from(endian + "IIQQQQ", table, i * shentsize)  # name, type, flags, addr, offset, size
        for i in range(shnum)
    ]
    _, _, _, _, str_off, str_size = sections[shstrndx]
    if str_size > _MAX_SHSTRTAB:
        raise ValueError("ELF section name table is implausibly large")
    names = _read_at(source, str_off, str_size)
    wanted = name.encode()
    for name_off, _, _, _, offset, size in sections:
        end = names.find(b"\0", name_off)
        if name_off >= len(names) or end < 0:
            raise ValueError("ELF section name is out of bounds")
        if names[name_off:end] == wanted:
            if size > _MAX_SECTION:
                raise ValueError(f"ELF section {name} is implausibly large ({size} bytes)")
            return _read_at(source, offset, size)
    raise ValueError(f"no {name} section (not a Wasmtime-compiled file?)")


# Wasmtime marks the ELF header's e_flags: 1 = core module, 2 = component.
ARTIFACT_KINDS: Final = {1: "module", 2: "component"}


def artifact_kind(source: bytes | bytearray | memoryview | int) -> str | None:
    """"module" or "component" for a Wasmtime artifact (by its ELF header's e_flags), else None."""
    try:
        header = _read_at(source, 0, _HEADER_SIZE)
    except (OSError, ValueError):
        return None
    if not is_elf(header) or header[4] != _ELFCLASS64 or header[5] not in (1, 2):
        return None
    (e_flags,) = struct.unpack_from("<I" if header[5] == 1 else ">I", header, 0x30)
    return ARTIFACT_KINDS.get(e_flags)
