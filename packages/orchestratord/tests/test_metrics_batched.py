"""Batched metric records (ORCH-2768): a scrape shows what direct records show."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.orchestratord.metrics import Metrics
from prometheus_client import generate_latest

_attrs = st.fixed_dictionaries(
    {"engine": st.sampled_from(["llamacpp", "vllm"]), "pool_id": st.sampled_from(["a", "b"])}
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("tasks_started"), st.integers(1, 3), _attrs),
        st.tuples(st.just("tokens_out"), st.integers(0, 500), _attrs),
        st.tuples(st.just("first_token_ms"), st.floats(0, 70_000), _attrs),
        st.tuples(st.just("decode_ms"), st.integers(0, 9_000), _attrs),
        st.tuples(st.just("scrape"), st.just(0), _attrs),
    ),
    max_size=40,
)


def _metrics(fold_every: int = 4096) -> Metrics:
    return Metrics(queue_depths=lambda: [], fold_every=fold_every)


def _page(m: Metrics) -> list[str]:
    """The rendered lines; the families' order follows their first record's."""
    return sorted(m.render().decode().splitlines())


@settings(max_examples=60, deadline=None)
@given(ops=_ops, fold_every=st.integers(1, 5))
def test_a_scrape_shows_what_direct_records_show(ops, fold_every):
    """ORCH-2768: counters summed and histogram values held per attribute set, handed
    to the SDK at a scrape (or at the bound), render the same page as each record
    handed on at once; scrapes in between see every record made before them."""
    batched, direct = _metrics(fold_every), _metrics()
    try:
        for name, value, attrs in ops:
            if name == "scrape":
                assert _page(batched) == _page(direct)
                continue
            for m in (batched, direct):
                instrument = getattr(m, name)
                if name.endswith("_ms"):
                    instrument.record(value, attrs)
                else:
                    instrument.add(value, attrs)
            direct.fold()  # the reference: every record in the SDK at once
        assert _page(batched) == _page(direct)
    finally:
        batched.shutdown()
        direct.shutdown()


def test_a_histogram_hands_its_values_on_at_the_bound():
    """ORCH-2768: at most ``fold_every`` values are held without a scrape."""
    m = _metrics(fold_every=3)
    try:
        attrs = {"engine": "llamacpp", "pool_id": "a"}
        for v in (1.0, 20.0):
            m.first_token_ms.record(v, attrs)
        before = generate_latest(m.registry).decode()
        m.first_token_ms.record(300.0, attrs)
        after = generate_latest(m.registry).decode()  # no render(): nothing folded it
        assert "latency_first_token_ms_count" not in before
        assert 'latency_first_token_ms_count{engine="llamacpp",pool_id="a"} 3.0' in after
        assert 'latency_first_token_ms_sum{engine="llamacpp",pool_id="a"} 321.0' in after
    finally:
        m.shutdown()


def test_one_attribute_set_in_two_orders_sums_as_recorded():
    """ORCH-2768: the same attribute set given in two key orders is one set: its values
    reach the SDK in record order, so the histogram's sum equals the direct records'
    to the bit (Hypothesis found 1.749…, 16383.0, 1.749… summing differently when
    the middle value's attributes came as ``pool_id, engine``)."""
    batched, direct = _metrics(fold_every=3), _metrics()
    ab = {"engine": "llamacpp", "pool_id": "a"}
    ba = {"pool_id": "a", "engine": "llamacpp"}
    try:
        for value, attrs in ((1.7491665071846683, ab), (16383.0, ba), (1.7491665071846683, ab)):
            for m in (batched, direct):
                m.first_token_ms.record(value, attrs)
            direct.fold()
        assert _page(batched) == _page(direct)
    finally:
        batched.shutdown()
        direct.shutdown()
