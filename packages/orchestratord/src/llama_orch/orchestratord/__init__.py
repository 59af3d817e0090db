"""orchestratord: the llama-orch daemon (OrchQueue v1 data plane, control plane, SSE, metrics)."""
