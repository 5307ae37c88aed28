"""The node's metrics in the Prometheus text format (`GET /metrics` of the HTTP API).

Theory of operation: nothing is counted twice. A scrape reads the figures where they already
are: the ledger (tasks by job and state, and its AttemptStats: attempts by outcome, evictions,
duplicate runs, run times, counted as results arrive), the membership (members by state), the
scheduler (lease expiries seen by this node) and the transport (gossip bytes, packets dropped by
reason). prometheus_client formats them (a custom collector, so no figure is kept in two
places). The ledger's figures are the swarm's, as this node's replica has them; the
transport's and the scheduler's are this node's own. A scrape costs O(jobs + members), and runs
on the event loop: the node's state is never read from another thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from swarm.core.gossip import MemberState
from swarm.core.ledger import RUN_TIME_BUCKETS_S, Outcome, State

if TYPE_CHECKING:
    from swarm.daemon.node import Node


class NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Any]:
        node = self.node
        ledger = node.ledger
        tasks = GaugeMetricFamily("swarm_tasks", "Tasks by job and state", labels=["job", "state"])
        for job, counts in sorted(ledger.job_counts.items()):
            for state in State:
                tasks.add_metric([job, str(state)], counts.get(state, 0))
        yield tasks

        members = GaugeMetricFamily("swarm_members", "Members by state", labels=["state"])
        seen: Counter[str] = Counter(
            str(m.state) for m in (node.membership.members.values() if node.membership else ())
        )
        if node.membership is None:
            seen["alive"] = 1  # a node alone: itself
        for member_state in MemberState:  # every state, 0 included: a series never vanishes
            members.add_metric([str(member_state)], seen.get(str(member_state), 0))
        yield members

        stats = ledger.stats
        attempts = CounterMetricFamily(
            "swarm_attempts", "Attempts that ended, by outcome", labels=["outcome"]
        )
        for outcome in Outcome:
            attempts.add_metric([str(outcome)], stats.outcomes.get(outcome, 0))
        yield attempts
        yield CounterMetricFamily(
            "swarm_duplicate_attempts",
            "Attempts that ended ok for a task that had one already",
            value=stats.duplicates,
        )
        yield CounterMetricFamily(
            "swarm_evictions",
            "Attempts stopped to free memory (--overcommit)",
            value=stats.evictions,
        )
        yield CounterMetricFamily(
            "swarm_lease_expiries",
            "Running tasks this node saw orphaned by a lapsed lease",
            value=node.core.sched.lease_expiries,
        )
        yield _run_time(stats.run_counts, stats.run_sum_s)

        gossip = CounterMetricFamily(
            "swarm_gossip_bytes", "Sealed bytes of gossip and sync", labels=["direction"]
        )
        dropped = CounterMetricFamily(
            "swarm_packets_dropped", "Traffic refused before the cores", labels=["reason"]
        )
        net = node.net
        sync = node.core.sync
        gossip.add_metric(["sent"], net.bytes_sent if net else 0)
        gossip.add_metric(["received"], net.bytes_received if net else 0)
        for reason, count in (
            ("undecodable", net.dropped if net else 0),
            ("forged", (net.membership.forged if net else 0) + sync.forged_records),
            ("bad_record", sync.bad_records),
            ("refused_record", sync.refused_records),
            ("stream_refused", net.streams_refused if net else 0),
            ("send_queue_full", net.send_dropped if net else 0),
        ):
            dropped.add_metric([reason], count)
        yield gossip
        yield dropped


def _run_time(counts: list[int], sum_s: float) -> HistogramMetricFamily:
    """The run times of the attempts that ended ok (`counts`: per bucket, the last over all)."""
    cumulative, buckets = 0, []
    for bound, count in zip(RUN_TIME_BUCKETS_S, counts, strict=False):
        cumulative += count
        buckets.append((repr(bound), cumulative))
    buckets.append(("+Inf", sum(counts)))
    return HistogramMetricFamily(
        "swarm_task_run_seconds",
        "Run time of the attempts that ended ok",
        buckets=buckets,
        sum_value=sum_s,
    )


def registry_for(node: Node) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry
