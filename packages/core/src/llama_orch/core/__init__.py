"""llama-orch-core: the pure domain of llama-orch (no I/O; stdlib and msgspec only)."""
