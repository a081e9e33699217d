"""The tree's names (publisher and client) and the CPU levels a publisher compiles for, highest first.

Explicit flags rather than wasmtime's presets: preset names changed across majors (<= 41 `x84_64_v3`,
42 underscores, >= 43 dashes) and the `x86-64-v3` preset lacks `has_avx` up to 50 (no AVX code). The
lists are exactly what the `x86-64-v2`, `haswell` and `skylake-avx512` presets enable in wasmtime 50
(tests/test_public_compat.py checks that). `baseline` is the bare target triple: SSE2 on x86_64.
A level name is only a label: consumers choose by the artifact's true ISA flags, never by name.
"""

from __future__ import annotations

from typing import Final

_V2: Final = ("has_sse3", "has_ssse3", "has_sse41", "has_sse42", "has_popcnt", "has_cmpxchg16b")
_V3: Final = (*_V2, "has_avx", "has_avx2", "has_bmi1", "has_bmi2", "has_fma", "has_lzcnt")
_V4: Final = (*_V3, "has_avx512f", "has_avx512dq", "has_avx512vl")

# arch (the triple's first part) -> ((level, ISA flags to enable), ...), highest first.
LEVELS: Final[dict[str, tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "x86_64": (("x86-64-v4", _V4), ("x86-64-v3", _V3), ("x86-64-v2", _V2), ("baseline", ())),
    "aarch64": (("baseline", ()),),
}
LEVEL_NAMES: Final = frozenset(name for levels in LEVELS.values() for name, _ in levels)


def levels_for(triple: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The levels of `triple`'s architecture, highest first (only `baseline` for an unknown one)."""
    return LEVELS.get(triple.split("-", 1)[0], (("baseline", ()),))


def level_rank(triple: str, level: str) -> int:
    """0 for the highest level of `triple`'s architecture, larger for lower ones; unknown names last."""
    names = [name for name, _ in levels_for(triple)]
    return names.index(level) if level in names else len(names)


# The tree's layout (see `_publish`): metadata and artifacts under these directories of a substituter's URL.
METADATA_DIR: Final = "metadata"
TARGETS_DIR: Final = "targets"


def target_path(kind: str, digest: str, abi: str, level: str) -> str:
    """The TUF target path of an artifact: the consumer computes it from what it loads and its engine."""
    return f"{kind}-{digest[:32]}-{abi[:32]}-{level}.cwasm.zst"

REVOKED_FIELD: Final = "x-wasmcache-revoked"  # in targets metadata: what the publisher revoked
