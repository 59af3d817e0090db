"""Workspace-wide pytest setup: real-engine fixtures come from pool-managerd."""

pytest_plugins = [
    "llama_orch.pool_managerd.testing",
    "llama_orch.pool_managerd.testing_engines",
]
