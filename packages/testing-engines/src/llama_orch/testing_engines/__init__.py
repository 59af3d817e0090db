"""Real engines behind pytest fixtures, for llama-orch's own tests (ORCH-4110).

Test support, never product: the daemons do not import it. Two pytest
plugins, loaded by the workspace's root ``conftest.py``::

    pytest_plugins = ["llama_orch.testing_engines.llamacpp",
                      "llama_orch.testing_engines.python_engines"]

* :mod:`.llamacpp`: ``llama_server_binary``, ``smollm2_model``,
  ``qwen_model``, ``start_llama_server``, ``smollm2_server``; the
  leftover-process check of a run (ORCH-6008).
* :mod:`.python_engines`: ``vllm_engine``, ``vllm_model``, ``vllm_server``,
  ``pytriton_engine``, ``triton_server`` (venvs built by
  :mod:`llama_orch.pool_managerd.provision_python`).

Missing engines skip, unless ``REQUIRE_REAL_LLAMA=1`` (ORCH-4001).

This ``__init__`` imports nothing: pytest must import each plugin module
itself to rewrite its asserts.
"""
