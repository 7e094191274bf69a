"""Fetch stage core: a polite WMTS client (`client`), a pure unique-tile plan (`plan`),
the on-disk tile store with manifests (`store`) and the parallel runner (`run`)."""
