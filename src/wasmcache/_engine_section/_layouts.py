"""Wasmtime's `Tunables` layouts, per major version, as data: the field list of each release's
struct, transcribed from `crates/environ/src/tunables.rs` at its tag (49 from the 49.0.0-dev tree)
and checked byte-for-byte against modules serialized by wasmtime-py 40 to 50.

Kept apart from the decoder the way wasmtime-py keeps its generated bindings apart: a new wasmtime
major adds a layout here and changes no code.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from ._postcard import (
    Field,
    Step,
    ZeroRun,
    dec_bool,
    dec_enum,
    dec_nonzero_u32,
    dec_operator_cost,
    dec_option,
    dec_u32,
    dec_u64,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

_COLLECTOR_40: Final = ("DeferredReferenceCounting", "Null")
_COLLECTOR_45: Final = ("DeferredReferenceCounting", "Null", "Copying")
_INTRA_MODULE_INLINING: Final = ("Yes", "No", "WhenUsingGc")
_INLINING: Final = ("Yes", "InterModuleAndIntraGc", "InterModule", "Intrinsics", "No")


def _b(name: str) -> Field:
    return Field(name, dec_bool)


def _u32(name: str) -> Field:
    return Field(name, dec_u32)


def _u64(name: str) -> Field:
    return Field(name, dec_u64)


# Wasmtime 40 and 41 (same struct as v39.0.0).
_LAYOUT_40: Final[tuple[Step, ...]] = (
    Field("collector", dec_option(dec_enum(_COLLECTOR_40))),
    _u64("memory_reservation"),
    _u64("memory_guard_size"),
    _u64("memory_reservation_for_growth"),
    _b("debug_native"),
    _b("debug_guest"),
    _b("parse_wasm_debuginfo"),
    _b("consume_fuel"),
    _b("epoch_interruption"),
    _b("memory_may_move"),
    _b("guard_before_linear_memory"),
    _b("table_lazy_init"),
    _b("generate_address_map"),
    _b("debug_adapter_modules"),
    _b("relaxed_simd_deterministic"),
    _b("winch_callable"),
    _b("signals_based_traps"),
    _b("memory_init_cow"),
    _b("inlining"),
    Field("inlining_intra_module", dec_enum(_INTRA_MODULE_INLINING)),
    _u32("inlining_small_callee_size"),
    _u32("inlining_sum_size_threshold"),
)

# Wasmtime 42: appends `concurrency_support`.
_LAYOUT_42: Final[tuple[Step, ...]] = (*_LAYOUT_40, _b("concurrency_support"))

# Wasmtime 43 and 44: `operator_cost` after `consume_fuel`; appends `recording`.
_LAYOUT_43: Final[tuple[Step, ...]] = (
    *_LAYOUT_40[:8],
    Field("operator_cost", dec_operator_cost),
    *_LAYOUT_40[8:],
    _b("concurrency_support"),
    _b("recording"),
)

# Wasmtime 45: `Copying` collector; `inlining` becomes the `Inlining` enum and
# replaces `inlining_intra_module`; appends the GC-heap tunables.
_LAYOUT_45: Final[tuple[Step, ...]] = (
    Field("collector", dec_option(dec_enum(_COLLECTOR_45))),
    _u64("memory_reservation"),
    _u64("memory_guard_size"),
    _u64("memory_reservation_for_growth"),
    _b("debug_native"),
    _b("debug_guest"),
    _b("parse_wasm_debuginfo"),
    _b("consume_fuel"),
    Field("operator_cost", dec_operator_cost),
    _b("epoch_interruption"),
    _b("memory_may_move"),
    _b("guard_before_linear_memory"),
    _b("table_lazy_init"),
    _b("generate_address_map"),
    _b("debug_adapter_modules"),
    _b("relaxed_simd_deterministic"),
    _b("winch_callable"),
    _b("signals_based_traps"),
    _b("memory_init_cow"),
    Field("inlining", dec_enum(_INLINING)),
    _u32("inlining_small_callee_size"),
    _u32("inlining_sum_size_threshold"),
    _b("concurrency_support"),
    _b("recording"),
    Field("gc_zeal_alloc_counter", dec_option(dec_nonzero_u32)),
    _u64("gc_heap_reservation"),
    _u64("gc_heap_guard_size"),
    _u64("gc_heap_reservation_for_growth"),
    _b("gc_heap_may_move"),
)

# Wasmtime 46: appends three metadata/branch-hint booleans.
_LAYOUT_46: Final[tuple[Step, ...]] = (
    *_LAYOUT_45,
    _b("metadata_for_internal_asserts"),
    _b("metadata_for_gc_heap_corruption"),
    _b("branch_hinting"),
)

# Wasmtime 47, 48 and 49: `debug_symbols` after `debug_guest`;
# `gc_heap_initial_size` before `gc_heap_may_move`.
_LAYOUT_47: Final[tuple[Step, ...]] = (
    *_LAYOUT_46[:6],
    _b("debug_symbols"),
    *_LAYOUT_46[6:28],
    _u64("gc_heap_initial_size"),
    *_LAYOUT_46[28:],
)

# Wasmtime 50: the 49 struct plus exactly one new one-byte field between
# `concurrency_support` and `gc_heap_reservation`.  Its source was not
# available; the evidence is (a) modules from 49 and 50 differ by exactly one
# zero byte there, (b) toggling settings in 50 moves the expected bytes on
# both sides of it, and (c) the 50 library's tunables compatibility checks
# gain one boolean check ("AddressSanitizer stack-switching support") right
# after the `recording` check.  Whether that byte sits before or after
# `recording`/`gc_zeal_alloc_counter` is not known, so those three slots are
# only accepted when all zero (what every release build writes); the unnamed
# field is left out of the decoded mapping.
_LAYOUT_50: Final[tuple[Step, ...]] = (
    *_LAYOUT_47[:24],
    ZeroRun(3, (("recording", False), ("gc_zeal_alloc_counter", None))),
    *_LAYOUT_47[26:],
)

LAYOUTS: Final[Mapping[int, tuple[Step, ...]]] = MappingProxyType(
    {
        40: _LAYOUT_40,
        41: _LAYOUT_40,
        42: _LAYOUT_42,
        43: _LAYOUT_43,
        44: _LAYOUT_43,
        45: _LAYOUT_45,
        46: _LAYOUT_46,
        47: _LAYOUT_47,
        48: _LAYOUT_47,
        49: _LAYOUT_47,
        50: _LAYOUT_50,
    }
)
