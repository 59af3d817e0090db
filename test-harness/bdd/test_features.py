"""Every feature file under ``features/`` runs as pytest scenarios (ORCH-6011).

Steps are in ``_steps_*.py`` (loaded by ``conftest.py``); ``test_steps_check.py``
proves that no step is undefined or ambiguous.
"""

from pytest_bdd import scenarios

scenarios("features")
