"""The small shared kernel every stage may import: typed errors, frozen configs, registries,
file helpers, units, quiet imports and user callables. It imports nothing else from workbench."""
