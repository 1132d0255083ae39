"""The front door's balancing rule as pure functions (no sockets): capacity, least outstanding,
affinity with slack, even spread of keyless requests, the affinity key of a conversation."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from aiboxctl.gateway.balance import AffinityTable, ReplicaView, affinity_key, choose_replica

views = st.lists(
    st.builds(ReplicaView, name=st.sampled_from("abcdef"), healthy=st.booleans(),
              outstanding=st.integers(0, 8), slots=st.integers(1, 8)),
    min_size=0, max_size=6, unique_by=lambda r: r.name)


@settings(max_examples=300, deadline=None)
@given(views, st.text(max_size=8), st.one_of(st.none(), st.sampled_from("abcdefz")), st.integers(0, 4))
def test_choice_is_a_healthy_replica_with_room_within_slack_of_the_least_busy(replicas, key, previous, slack):
    choice = choose_replica(replicas, key, previous, slack)
    room = [r for r in replicas if r.healthy and r.outstanding < r.slots]
    if not room:
        assert choice is None  # the caller queues
        return
    chosen = next(r for r in replicas if r.name == choice.replica)
    least = min(r.outstanding for r in room)
    assert chosen in room
    if choice.by_affinity:
        assert chosen.name == previous and chosen.outstanding <= least + slack
    else:
        assert chosen.outstanding == least
        # the previous replica was passed over only because it had no room or was too busy
        prev = next((r for r in room if r.name == previous), None)
        assert prev is None or prev.outstanding > least + slack


def test_affinity_keeps_a_conversation_until_its_replica_is_much_busier():
    a, b = ReplicaView("a", True, 1, 4), ReplicaView("b", True, 0, 4)
    assert choose_replica([a, b], "k", previous="a", slack=1).replica == "a"
    busier = ReplicaView("a", True, 2, 4)
    assert choose_replica([busier, b], "k", previous="a", slack=1).replica == "b"
    down = ReplicaView("a", False, 0, 4)
    assert choose_replica([down, b], "k", previous="a").replica == "b"
    full = ReplicaView("a", True, 4, 4)
    assert choose_replica([full, ReplicaView("b", True, 3, 4)], "k", previous="a").replica == "b"


def test_keyless_requests_spread_evenly_and_a_key_is_stable():
    idle = [ReplicaView(n, True, 0, 4) for n in ("a", "b", "c")]
    picks = Counter(choose_replica(idle, f"#{i}").replica for i in range(3000))
    assert set(picks) == {"a", "b", "c"} and min(picks.values()) > 800
    assert len({choose_replica(idle, "same").replica for _ in range(10)}) == 1


def test_least_outstanding_wins_and_nothing_with_room_is_none():
    rs = [ReplicaView("a", True, 2, 4), ReplicaView("b", True, 1, 4), ReplicaView("c", False, 0, 4)]
    assert choose_replica(rs, "x").replica == "b"
    assert choose_replica([ReplicaView("a", True, 2, 2), ReplicaView("c", False, 0, 4)], "x") is None
    assert choose_replica([], "x") is None


def test_affinity_key_of_a_growing_conversation_is_stable():
    sys_ = {"role": "system", "content": "be brief"}
    first = {"messages": [sys_, {"role": "user", "content": "hi"}]}
    later = {"messages": [sys_, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "more"}]}
    other = {"messages": [sys_, {"role": "user", "content": "another topic"}]}
    assert affinity_key(first) == affinity_key(later) != affinity_key(other)
    assert affinity_key({**first, "user": "u1"}) == affinity_key({**other, "user": "u1"}) == "user:u1"
    assert affinity_key({"prompt": "x" * 600}) == affinity_key({"prompt": "x" * 600 + "more"})
    assert affinity_key({"input": "embed me"}) is None
    assert affinity_key({"messages": "not a list"}) is None


def test_affinity_table_forgets_the_oldest():
    t = AffinityTable(size=2)
    t.put("a", "r1")
    t.put("b", "r2")
    t.get("a")  # a is now the most recent
    t.put("c", "r1")
    assert t.get("b") is None and t.get("a") == "r1" and len(t) == 2
