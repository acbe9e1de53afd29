"""The runtime's metrics through an OpenTelemetry MeterProvider that an embedding
application hands in: the same names, labels and meaning as the Prometheus families.

Counters and occupancy are observable instruments, read at collection time from the
same plain-number children the Prometheus collector renders. OpenTelemetry has no
observable histogram, so histogram children also record each observation into an
OTel histogram; that happens only when a MeterProvider is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

if TYPE_CHECKING:
    from .metrics import _Family
    from .session import SessionManager

INSTRUMENTATION = "agent_runtime"


class OtelMirror:
    """Registers metric families with `meter_provider`'s meter as they are made."""

    def __init__(self, meter_provider: Any) -> None:
        self.meter = meter_provider.get_meter(INSTRUMENTATION)

    def histogram(self, family: "_Family") -> Callable[[float, dict[str, str]], None]:
        """The record function that a histogram family's children call on each observation."""
        return self.meter.create_histogram(
            family.name, unit="s", description=family.help,
            explicit_bucket_boundaries_advisory=list(family.bounds[:-1])).record

    def counter(self, family: "_Family",
                extra: Callable[[], Iterable[Observation]] = lambda: ()) -> None:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            observations = [Observation(child.value, dict(zip(family.labels, values)))
                            for values, child in list(family.children.items())]
            observations.extend(extra())
            return observations

        self.meter.create_observable_counter(family.name, callbacks=[observe], description=family.help)

    def occupancy(self, manager: "SessionManager", runs: "_Family", rejected_status: str) -> None:
        """Concurrency limit, runs in flight and queued per agent, and refusals (counted
        into `runs` with `rejected_status`), read from admission at collection time."""
        admission = manager.admission

        def per_agent(counts: dict[str, int]) -> Callable[[CallbackOptions], list[Observation]]:
            return lambda options: [Observation(dict(counts).get(agent, 0), {"agent": agent})
                                    for agent in manager.agents]

        self.meter.create_observable_gauge(
            "agent_runtime_concurrency_limit", description="Runs that may execute at once (0 = unlimited).",
            callbacks=[lambda options: [Observation(admission.limit)]])
        self.meter.create_observable_gauge(
            "agent_runtime_runs_in_flight", description="Runs holding a concurrency slot now.",
            callbacks=[per_agent(admission.running)])
        self.meter.create_observable_gauge(
            "agent_runtime_runs_queued", description="Runs waiting in the admission queue for a slot.",
            callbacks=[per_agent(admission.queued)])
        self.counter(runs, lambda: [Observation(count, {"agent": agent, "status": rejected_status})
                                    for agent, count in dict(admission.rejected).items()])
