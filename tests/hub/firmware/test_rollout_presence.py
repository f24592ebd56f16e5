"""The roll-out presence planner without a hub: offline nodes, offline canaries."""

from __future__ import annotations

from hub.firmware.presence import MarkOffline, MarkOnline, ReplaceCanary, Stop, plan
from hub.storage.api import Rollout, RolloutNode

T0 = 1_800_000_000.0


def rollout(timeout: float = 600.0) -> Rollout:
    return Rollout(
        "fw-1", T0, "gw-fw", "1.0.0", "0" * 64, "0" * 64, 1, {}, None, 10, None, False, "running",
        canary_timeout=timeout,
    )  # fmt: skip


def node(name: str, state: str = "pending", canary: bool = False) -> RolloutNode:
    return RolloutNode("fw-1", f"id-{name}", name, canary, state, "", 0, 0, 0, T0)


def test_offline_nodes_show_since_when_and_come_back_pending() -> None:
    nodes = [node("a"), node("b", "transferring"), node("c", "offline"), node("d", "installed")]
    seen = {"id-a": T0 - 60, "id-b": None}
    actions = plan(rollout(), nodes, {"id-c"}, set(), seen, T0)
    assert [type(a) for a in actions] == [MarkOffline, MarkOffline, MarkOnline]
    first, second, third = actions
    assert isinstance(first, MarkOffline) and first.detail.startswith("offline since ")
    assert isinstance(second, MarkOffline) and second.detail == "offline, never connected"
    assert isinstance(third, MarkOnline) and third.node.node_name == "c"


def test_a_node_past_the_transfer_or_being_sent_to_keeps_its_state() -> None:
    nodes = [node("a", "restarting"), node("b", "health-check"), node("c")]
    assert plan(rollout(), nodes, set(), {"id-c"}, {}, T0) == []


def test_an_offline_canary_waits_its_timeout_then_is_replaced_by_name_order() -> None:
    nodes = [node("a", "offline", canary=True), node("b", "offline"), node("c"), node("d")]
    seen = {"id-a": T0 + 100, "id-b": T0}
    online = {"id-c", "id-d"}
    assert plan(rollout(60), nodes, online, set(), seen, T0 + 159) == []
    (action,) = plan(rollout(60), nodes, online, set(), seen, T0 + 160)
    assert isinstance(action, ReplaceCanary)
    assert (action.old.node_name, action.new.node_name) == ("a", "c")
    assert action.detail.endswith("; replaced as canary by c")


def test_the_timeout_counts_from_the_push_for_a_node_offline_before_it() -> None:
    nodes = [node("a", "offline", canary=True), node("b")]
    seen = {"id-a": T0 - 86_400}
    assert plan(rollout(60), nodes, {"id-b"}, set(), seen, T0 + 59) == []
    (action,) = plan(rollout(60), nodes, {"id-b"}, set(), seen, T0 + 60)
    assert isinstance(action, ReplaceCanary)


def test_no_spare_node_stops_the_rollout_with_the_reason() -> None:
    nodes = [node("a", "offline", canary=True), node("b", "offline"), node("c", "installed")]
    (action,) = plan(rollout(600), nodes, {"id-c"}, set(), {}, T0 + 600)
    assert isinstance(action, Stop)
    assert action.reason == (
        "canary a offline, never connected, more than --canary-timeout 10 min, and no "
        "other online node to replace it: bring it online and push again"
    )


def test_a_canary_gone_offline_past_the_transfer_stops_and_is_never_replaced() -> None:
    # It may not have come back from the new firmware: a replacement would hide that
    # and let the roll-out reach the rest of the fleet.
    nodes = [node("a", "restarting", canary=True), node("b")]
    seen = {"id-a": T0 + 10}
    assert plan(rollout(60), nodes, {"id-b"}, set(), seen, T0 + 69) == []
    (action,) = plan(rollout(60), nodes, {"id-b"}, set(), seen, T0 + 70)
    assert isinstance(action, Stop), action
    assert action.reason.startswith("canary a offline since "), action.reason
    assert "while restarting, more than --canary-timeout 1 min" in action.reason
    assert "may not have come back from the new firmware" in action.reason
