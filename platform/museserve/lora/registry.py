"""Which adapters a pool serves, by name: those its config lists, and the subdirectories of its
adapter store. Plain paths, no weights; the gateway and the replicas read it the same way."""

from __future__ import annotations

import os
import re

from museserve.config.lora import ADAPTER_NAME, LoraConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_NAME = re.compile(ADAPTER_NAME)


class AdapterRegistry:
    def __init__(self, config: LoraConfig):
        self.config = config
        self._listed = {source.name: source.path for source in config.adapters}

    def path(self, name: str) -> str | None:
        """The adapter's directory, or None when the pool has no adapter of that name. A listed
        adapter wins over a store subdirectory of the same name."""
        if name in self._listed:
            return self._listed[name]
        store = self.config.directory
        if store is None or not _NAME.match(name):
            return None  # a name that could not be a subdirectory (no '/', no '..')
        candidate = os.path.join(store, name)
        return candidate if os.path.isfile(os.path.join(candidate, ADAPTER_CONFIG)) else None

    def names(self) -> list[str]:
        """Every adapter served, sorted: the listed ones and the store's (read now)."""
        found = set(self._listed)
        store = self.config.directory
        if store is not None:
            try:
                entries = os.listdir(store)
            except OSError:
                entries = []  # a store not mounted (yet): only the listed adapters
            found.update(
                entry
                for entry in entries
                if _NAME.match(entry) and os.path.isfile(os.path.join(store, entry, ADAPTER_CONFIG))
            )
        return sorted(found)
