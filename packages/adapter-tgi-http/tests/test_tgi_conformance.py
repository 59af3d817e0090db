"""tgi-http through the conformance suite against a fake TGI (ORCH-4015, ORCH-4017).

No real TGI runs in CI here; the fake (``conftest.py``) follows TGI's
documented wire behaviour. ``LOADING`` is not provided: TGI refuses
connections until its model is loaded, which is the ``UNREACHABLE`` case.
"""

from __future__ import annotations

import pytest
from llama_orch.testing import AdapterConformance, EngineUnderTest


class TestTgiConformance(AdapterConformance):
    engine_label = "fake-tgi-3.3.6"

    @pytest.fixture
    def engine_under_test(self, tgi_engine_under_test: EngineUnderTest) -> EngineUnderTest:
        return tgi_engine_under_test
