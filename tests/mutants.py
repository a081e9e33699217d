"""The project's curated mutation list: each entry breaks one safety property on purpose.

`make mutants` (scripts/mutants.py) applies each mutation to a copy of src/, runs the tests named
for it against that copy, and expects them to fail ("killed"). tests/test_mutants.py checks, in
the fast suite, that every anchor below still occurs exactly once in src/: when a refactor moves
the code, retarget the anchor (keep anchors short and distinctive: one line where possible).

A mutation: `id`, the property it breaks (one line), its edits — (file under src/wasmcache/,
exact text to replace, replacement) — and the pytest node ids that must fail under it.
"""

from __future__ import annotations

from typing import NamedTuple


class Edit(NamedTuple):
    file: str  # relative to src/wasmcache/
    anchor: str  # must occur exactly once in that file
    replacement: str


class Mutant(NamedTuple):
    id: str
    prop: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


def _m(id_: str, prop: str, edits: list[tuple[str, str, str]], tests: list[str]) -> Mutant:
    return Mutant(id_, prop, tuple(Edit(*e) for e in edits), tuple(tests))


G = "tests/test_guards.py::"
P = "tests/test_properties.py::"

MUTANTS: tuple[Mutant, ...] = (
    # --- issue 14: the properties the audit's breakages survived (tests/test_guards.py) ---------------
    _m("entry-engine-section",
       "an entry another engine configuration compiled is never served, and verify reports it",
       [("_storage/__init__.py", "if section is not None and entry_section != section and not", "if False and not")],
       [G + "test_an_entry_another_engine_compiled_is_never_served_even_with_a_record_that_matches_its_bytes"]),
    _m("key-without-fingerprint",
       "the cache key changes with the engine fingerprint",
       [("_key.py", r"v1\0{fingerprint}\0{kind}", r"v1\0{kind}")],
       [G + "test_the_cache_key_changes_with_the_engine_fingerprint"]),
    _m("remote-decompress-cap",
       "a remote artifact's decompression is bounded by its signed size",
       [("_remote/_artifact.py", "ZstdDecompressor().decompress(payload, max_output_size=size)",
         "ZstdDecompressor().decompressobj().decompress(payload)")],
       [G + "test_a_signed_artifact_that_inflates_to_a_gigabyte_is_rejected_within_tens_of_megabytes"]),
    _m("memo-still-valid",
       "an entry rewritten in place after it was loaded is not served again from the per-process memo",
       [("_loaded.py", "        if self.identity is None:\n            return True", "        return True")],
       [G + "test_an_entry_rewritten_in_place_after_its_load_is_not_served_again_from_the_process_memo"]),
    _m("exec-chain-sitecustomize",
       "exec runs the sitecustomize it shadows",
       [("_hook/_wasmcache_site.py", "spec = finder.find_spec(", "spec = None and finder.find_spec(")],
       [G + "test_exec_runs_the_sitecustomize_it_shadows_in_the_program_and_its_children"]),
    _m("doctor-judge-ours",
       "doctor --pid reports our entry rewritten in place under a live mapping, even with identical bytes",
       [("_doctor.py", "if found[0].identity == Identity.of(st):", "if True:")],
       [G + "test_doctor_pid_reports_our_entry_rewritten_in_place_even_with_identical_bytes"]),
    _m("miss-source-recheck",
       "a source replaced before the miss path reads it never puts its code under the old key",
       [("_miss.py", "if wasm_digest(data) != digest:", "if False:")],
       [G + "test_a_source_replaced_before_the_miss_reads_it_never_puts_its_code_under_the_old_key"]),
    _m("publish-in-place",
       "publication never writes into an existing entry (a process mapping it keeps its inode unchanged)",
       [("_storage/__init__.py", 'quarantine(self.root, entry, "replaced by a fresh compile")', "pass"),
        ("_storage/__init__.py",
         "published = Identity.of(write_atomically(entry, content, durable=True, read_only=True))",
         ("published = Identity.of(os.stat(entry)) if os.path.lexists(entry) and open(entry, 'wb').write(content)"
          " else Identity.of(write_atomically(entry, content, durable=True, read_only=True))"))],
       [G + "test_a_process_mapping_an_entry_keeps_its_inode_unchanged_while_the_key_is_republished_and_cleared"]),
    _m("run-trap-exit",
       "a trap ends `run` with wasmtime's exit code 134, exactly",
       [("_run/_outcome.py", "TRAP_EXIT if trapped else ERROR_EXIT", "ERROR_EXIT")],
       [G + "test_a_trap_and_a_fuel_budget_end_the_run_with_wasmtime_runs_exit_code[trap]",
        G + "test_a_trap_and_a_fuel_budget_end_the_run_with_wasmtime_runs_exit_code[fuel-runs-out]",
        "tests/test_cli.py::test_run_invoke_and_trap"]),
    _m("run-fuel-budget",
       "-W fuel=N gives the guest exactly N units of fuel",
       [("_run/_wasi.py", "store.set_fuel(options.fuel)", "store.set_fuel(options.fuel * 1_000_000_000)")],
       [G + "test_a_trap_and_a_fuel_budget_end_the_run_with_wasmtime_runs_exit_code[fuel-runs-out]"]),
    _m("dropin-cache-per-engine",
       "under the drop-in each engine is served by a cache of that engine",
       [("_dropin.py", "attached = engine.__dict__.setdefault(", "attached = self.__dict__.setdefault(")],
       [G + "test_under_the_drop_in_each_engine_gets_modules_compiled_for_it"]),
    _m("record-key",
       "an entry and its record copied under another key are never served",
       [("_storage/__init__.py", "if record.key != key or (kind", "if (kind")],
       [G + "test_an_entry_and_its_record_copied_under_another_key_are_never_served"]),
    _m("gc-evict-under-key-lock",
       "gc never removes the entry of a key someone holds (compiling, publishing, repairing)",
       [("_storage/__init__.py", "if not lock.try_acquire():\n            return False  # being compiled",
         "if not lock.try_acquire() and False:\n            return False  # being compiled")],
       [G + "test_gc_and_clear_leave_a_key_whose_lock_is_held"]),
    _m("clear-under-key-lock",
       "clear never removes the files of a key someone holds (a publication lands whole)",
       [("_storage/__init__.py", "if not lock.try_acquire():\n            return None  # a writer",
         "if not lock.try_acquire() and False:\n            return None  # a writer")],
       [G + "test_gc_and_clear_leave_a_key_whose_lock_is_held"]),
    # --- issue 8 item 17: seen killed by hand then, kept here (tests/test_properties.py) -------------
    _m("publish-no-temp-fsync",
       "a publication fsyncs its temp file before the rename",
       [("_fs.py", "        if durable:\n            os.fsync(fd)\n", "")],
       [P + "test_a_publication_fsyncs_file_then_renames_then_fsyncs_the_directory"]),
    _m("publish-fsync-after-rename",
       "a publication fsyncs its temp file before the rename, not after",
       [("_fs.py", "        if durable:\n            os.fsync(fd)\n", ""),
        ("_fs.py", "        os.rename(temp, final)\n",
         "        os.rename(temp, final)\n        if durable:\n            os.fsync(fd)\n")],
       [P + "test_a_publication_fsyncs_file_then_renames_then_fsyncs_the_directory"]),
    _m("publish-no-directory-fsync",
       "a publication fsyncs the directory after the rename",
       [("_fs.py", "    if durable:\n        fsync_directory(final.parent)\n", "")],
       [P + "test_a_publication_fsyncs_file_then_renames_then_fsyncs_the_directory"]),
    _m("records-not-durable",
       "records are published durably (fsync, rename, directory fsync)",
       [("_record.py", "mode=0o644, durable=True)", "mode=0o644, durable=False)")],
       [P + "test_a_publication_fsyncs_file_then_renames_then_fsyncs_the_directory"]),
    _m("identity-before-rename",
       "the identity recorded is the entry's stat after the rename (a hit by identity, no re-hash)",
       [("_fs.py", "    return published\n", "    return written\n")],
       [P + "test_a_publication_fsyncs_file_then_renames_then_fsyncs_the_directory"]),
    _m("entry-nofollow",
       "an entry that is a symlink is never followed, even to a valid copy",
       [("_fs.py", "os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC", "os.O_RDONLY | O_CLOEXEC")],
       [P + "test_an_entry_that_is_a_symlink_is_never_followed_even_to_a_valid_copy[wasmcache]"]),
    _m("publish-post-rename-inode",
       "the identity recorded is the published file's, never a file that replaced it after the rename",
       [("_fs.py", "if read_only and (published.st_dev, published.st_ino) != (written.st_dev, written.st_ino):",
         "if False:")],
       [P + "test_an_entry_replaced_right_after_its_rename_is_never_vouched_for"]),
    _m("keylock-inode-recheck",
       "a key lock file replaced before our flock is not taken for the lock",
       [("_lock.py", "if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):", "if True:")],
       [P + "test_a_key_lock_file_replaced_before_our_flock_is_not_taken_for_the_lock"]),
    _m("quarantine-only-if-unchanged",
       "a repair sets aside only the file it judged, never one published while it waited",
       [("_storage/__init__.py", "if seen is not None and current is not None and current != seen:", "if False:")],
       [P + "test_a_repair_never_quarantines_a_good_entry_published_while_it_waited"]),
    _m("map-the-checked-fd",
       "the inode checked is the inode mapped, even if the path is swapped in between",
       [("_cache.py", 'ctx.engine, f"{_FD_DIR}/{checked.fd}")', 'ctx.engine, os.readlink(f"{_FD_DIR}/{checked.fd}"))')],
       [P + "test_the_inode_checked_is_the_inode_mapped_even_if_the_path_is_swapped_in_between[wasmcache]"]),
    _m("hit-hashes-the-entry",
       "a hit reads no entry byte (the recorded identity vouches for the content)",
       [("_storage/__init__.py", "check = full or keep_data or record.identity != seen", "check = True")],
       [P + "test_a_fresh_process_hit_reads_no_entry_byte_and_writes_nothing"]),
    _m("remote-engine-section",
       "a signed remote artifact compiled by another engine is rejected before anything is published",
       [("_miss.py", "if section != place.section:", "if False:")],
       [P + "test_a_signed_artifact_compiled_by_another_engine_is_rejected_before_anything_is_published[winch]",
        P + "test_a_signed_artifact_compiled_by_another_engine_is_rejected_before_anything_is_published"
            "[opt-level 0]"]),
    # --- further properties the suite already guards (each kill seen with `make mutants`) --------------
    _m("entry-content-digest",
       "an entry whose content does not match its record is never served",
       [("_storage/__init__.py", "if size != record.size or digest != record.content_digest:", "if False:")],
       [("tests/test_reliability.py::test_corruption_matrix_a_fresh_process_gets_a_correct_module"
        "[another-modules-cwasm]")]),
    _m("entry-unsafe-refused",
       "an entry others could rewrite (world-writable) is refused",
       [("_cache.py", "reason = unsafe_reason(checked.stat)", "reason = None")],
       ["tests/test_reliability.py::test_world_writable_root_namespace_or_entry_is_refused"]),
    _m("namespace-unsafe-refused",
       "a namespace others could write into (world-writable) is refused",
       [("_context.py", "if not self.safe(namespace.path, namespace_stat):", "if False:")],
       ["tests/test_reliability.py::test_world_writable_root_namespace_or_entry_is_refused"]),
    _m("root-unsafe-refused",
       "a root others could write into (world-writable) is refused before anything is written into it",
       [("_context.py", "if existing is not None and not self.safe(self.root, existing):", "if False:")],
       ["tests/test_reliability.py::test_world_writable_root_namespace_or_entry_is_refused"]),
    _m("miss-recheck-under-lock",
       "a loader that waited for the key's lock maps what the holder published (one compile per key)",
       [("_miss.py", "if module is not None or place.serialized:", "if place.serialized:")],
       ["tests/test_crash_safety.py::test_n_processes_cold_starting_one_module_compile_it_once"]),
    _m("temp-recheck-after-flock",
       "a writer whose temp file was reaped before its flock writes a new one",
       [("_fs.py", "            current = os.stat(temp, follow_symlinks=False)", "            current = held")],
       ["tests/test_not_ours.py::test_a_temp_file_reaped_before_its_writer_locked_it_is_written_again"]),
    _m("gc-reaps-live-writer",
       "gc never reaps a live writer's temp file (the writer holds its flock)",
       [("_fs.py", "\n        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n        held", "\n        held")],
       ["tests/test_chaos.py::test_gc_reaps_dead_writers_temp_files_of_small_files_but_not_a_live_ones"]),
    _m("remote-signature",
       "a remote artifact whose signature is not the trusted key's is rejected",
       [("_remote/_tier.py", "public.verify(signature, SIGNING_CONTEXT + encoded)", "None")],
       [("tests/test_remote.py::test_a_tampered_artifact_is_rejected_and_the_module_compiled_locally"
        "[another module's code, consistent metadata, forged signature]")]),
    _m("remote-key-binding",
       "a signed remote artifact of another key or engine (moved, copied) is rejected",
       [("_remote/_tier.py", 'if metadata["key"] != key or metadata["fingerprint"] != fingerprint:', "if False:")],
       [("tests/test_remote.py::test_a_tampered_artifact_is_rejected_and_the_module_compiled_locally"
        "[another module's valid artifact]")]),
    _m("remote-content-digest",
       "a remote module whose bytes are not its signed content digest is rejected",
       [("_remote/_tier.py", '!= metadata["content_digest"]:', '!= metadata["content_digest"] and False:')],
       [("tests/test_remote.py::test_a_tampered_artifact_is_rejected_and_the_module_compiled_locally"
        "[re-signed with a digest that is not the content's]")]),
    _m("share-only-a-vouched-entry",
       "a snapshot shares the inode only of an entry whose recorded identity vouches for it, never a copy",
       [("_storage/__init__.py", "if checked.content_checked or checked.record.content_digest",
         "if checked.record.content_digest")],
       ["tests/test_shared_content.py::test_an_entry_whose_record_does_not_vouch_for_it_is_never_shared"]),
    _m("dropin-maps-the-programs-file",
       "under the drop-in, deserialize_file never maps the program's own (rewritable) file",
       [("_dropin_patches.py", "                or dropin.owns(path)):", "                or True):")],
       ["tests/test_dropin_crash.py::test_deserialize_file_maps_a_snapshot_never_the_programs_file[module]"]),
    # --- issue 13: substituters ------------------------------------------------------------------------
    _m("substitute-section-compat",
       "a substituted entry's section may differ from the namespace's in CPU features only, never in engine settings",
       [("_storage/__init__.py", "    return loadable(entry_section, section) is None", "    return True")],
       ["tests/test_substituted.py::test_a_substituted_record_admits_cpu_levels_only_never_other_engine_settings"]),
    _m("substitute-artifact-digests",
       "a downloaded artifact must match its signed length, hashes and decompressed digest before anything uses it",
       [("_public/_client.py", "if reader.received != info.length or reader.sha256() != sha256:", "if False:"),
        ("_public/_client.py", 'if written != size or content.hexdigest() != custom["blake3"]:', "if False:")],
       ["tests/test_public.py::test_a_damaged_artifact_is_a_miss_and_nothing_reaches_wasmtime[tampered]"]),
    _m("substitute-loadable-check",
       "a downloaded artifact whose own engine section this host cannot load never reaches wasmtime",
       [("_public/_client.py", "            why = loadable(section, host_section)", "            why = None")],
       ["tests/test_public.py::test_a_forged_above_host_variant_is_never_chosen_nor_loaded"]),
    _m("publish-revoked-never-again",
       "an artifact whose content was revoked is never published again (a rebuild of the same bytes, a re-run)",
       [("_public/_publish.py", 'if entry["custom"].get("blake3") in revoked_digests:', "if False:")],
       ["tests/test_public.py::test_a_revoked_artifact_never_comes_back_on_a_later_publish"]),
    _m("fork-closes-inherited-locks",
       "a child forked while its parent holds a key's lock closes its copy (else it waits for itself)",
       [("_lock.py", "    os.register_at_fork(after_in_child=_close_inherited)", "    pass")],
       ["tests/test_guest.py::test_a_child_forked_while_its_parent_compiles_a_key_is_not_stuck_on_the_inherited_lock"]),
    # --- the shell launcher (bin/wasmcache-exec) serves `exec` as the Python CLI does (tests/test_launcher.py) -
    _m("launcher-root-not-pinned",
       "exec pins one root for CMD and everything it starts, through wasmcache-exec too",
       [("../wasmcache-launcher.sh", "case $base in */) WASMCACHE_DIR=${base}wasmcache ;;", "case $base in */) ;;")],
       ["tests/test_launcher.py::test_cmd_sees_the_same_environment_through_the_launcher_and_the_python_cli"]),
    _m("launcher-keeps-ignored-sigpipe",
       "CMD gets SIGPIPE and SIGXFSZ back even when the caller ignores them, through wasmcache-exec too",
       [("../wasmcache-launcher.sh", '[ "$((mask & 0x1001000))" = 0 ] || python_cli "$@"', ":")],
       ["tests/test_launcher.py::test_cmd_gets_sigpipe_and_sigxfsz_back_even_when_the_caller_ignores_them"]),
)
