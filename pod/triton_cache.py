"""A Triton cache in two layers: the image's baked cache, read-only, under a writable one that grows with the pod.

Selected with `TRITON_CACHE_MANAGER=pod.triton_cache:LayeredCacheManager` (triton.runtime.cache reads the variable
for every kernel, launcher and utility module it compiles or looks up). Lookups try TRITON_CACHE_DIR first, then
IMAGEFACTORY_TRITON_BAKED_CACHE (`/opt/triton-cache`, warmed at build time for the image's SM); everything new is
written to TRITON_CACHE_DIR only. The entrypoint points TRITON_CACHE_DIR at /workspace/.cache/triton when a volume
is mounted, so a restarted pod finds what it compiled before, and the baked cache stays exactly as the gate proved it.

A baked entry is used where it lies: its group file names its children by absolute path inside the baked cache,
and Triton keys entries by content (source, options, triton build), so reading it in place is what a hit means.
"""

from __future__ import annotations

import os

from triton.runtime.cache import FileCacheManager

BAKED_CACHE_ENV = "IMAGEFACTORY_TRITON_BAKED_CACHE"


class LayeredCacheManager(FileCacheManager):
    """FileCacheManager on TRITON_CACHE_DIR (reads and writes) that also reads the baked cache."""

    def __init__(self, key, override=False, dump=False):
        super().__init__(key, override=override, dump=dump)
        baked = os.environ.get(BAKED_CACHE_ENV)
        lower = os.path.join(baked, key) if baked and not (override or dump) else None
        # The same directory twice (TRITON_CACHE_DIR left at the baked path) is one layer.
        self._lower = lower if lower and os.path.realpath(lower) != os.path.realpath(self.cache_dir) else None

    def get_file(self, filename):
        found = super().get_file(filename)
        if found is None and self._lower is not None:
            path = os.path.join(self._lower, filename)
            return path if os.path.exists(path) else None
        return found

    def get_group(self, filename):
        found = super().get_group(filename)
        if found is None and self._lower is not None:
            return _BakedLayer(self.key, self._lower).get_group(filename)
        return found


class _BakedLayer(FileCacheManager):
    """Read-only view of one key's directory in the baked cache (never created, never written)."""

    def __init__(self, key, directory):
        # Not FileCacheManager.__init__: it would create the directory (the baked cache is read-only).
        self.key = key
        self.cache_dir = directory
        self.lock_path = None

    def put(self, data, filename, binary=True):
        raise PermissionError(f"the baked Triton cache is read-only: {self.cache_dir}")
