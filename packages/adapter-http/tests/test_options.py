"""ORCH-4104: options carry their constraints in their types."""

from __future__ import annotations

import pytest
from llama_orch.adapter_http import HttpTimeouts, Positive, parse_options
from llama_orch.core.errors import InvalidParams


class Opts(HttpTimeouts, frozen=True, kw_only=True):
    slots: Positive = 1


def test_defaults_and_unknown_keys_ignored() -> None:
    opts = parse_options({"slots": 3, "launch_flag": "--x"}, Opts, "eng")
    assert opts == Opts(slots=3)
    assert (opts.idle_timeout_s, opts.connect_timeout_s) == (60.0, 10.0)
    assert (opts.request_timeout_s, opts.health_timeout_s) == (30.0, 5.0)


@pytest.mark.parametrize(
    "raw",
    [
        {"idle_timeout_s": 0},
        {"connect_timeout_s": -1.0},
        {"request_timeout_s": "soon"},
        {"health_timeout_s": 0.0},
        {"slots": 0},
    ],
)
def test_bad_values_fail_loudly_naming_the_adapter(raw: dict[str, object]) -> None:
    with pytest.raises(InvalidParams, match=r"invalid eng adapter options: .*`\$\.\w+`"):
        parse_options(raw, Opts, "eng")
