"""Nagios/Icinga-style health checks over host metric snapshots.

Thresholds are written `cpu>80,disk>85,mem>=95,load1>4` (metrics in
`metricsview.METRICS`; "disk" is the fullest filesystem). `evaluate` gives
each host a state and the fleet the worst of them, reported the way the
monitoring plugin guidelines ask: exit status 0-3, one status line with
performance data after "|", and long output lines after it.

States rank the Icinga way (its problem severity), not by their numbers:
CRITICAL > UNKNOWN > WARNING > OK. A host we cannot judge is more urgent than
one that is merely close to a limit, yet an actual CRITICAL still wins.
A host that is unreachable is CRITICAL by default (it might be down), or
UNKNOWN when the caller prefers "we could not look" (`unreachable_state=3`).
A host that answered without a metric some threshold needs is UNKNOWN.
"""

from __future__ import annotations

import enum
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from shoal.protocol.errors import ConfigError

from shoal.controller.metricsview import METRICS, Snapshots, failure_reason, host_order_key, metric_value

__all__ = ["State", "Threshold", "HostCheck", "CheckResult", "parse_thresholds", "evaluate", "worst"]


class State(enum.IntEnum):
    """Plugin states; the value is the exit status."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


_SEVERITY = {State.OK: 0, State.WARNING: 1, State.UNKNOWN: 2, State.CRITICAL: 3}

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}

_PERCENT_METRICS = frozenset({"cpu", "mem", "swap", "disk"})

#: Problem hosts named in the status line; the rest are counted (all are in details()).
MAX_SUMMARY_HOSTS = 10
#: Bytes of the first output line: Nagios keeps 8 KiB of it (MAX_PLUGIN_OUTPUT_LENGTH)
#: and cuts the rest, perfdata and all. Perfdata that does not fit follows the long
#: output, after a "|", one item per line, as the plugin guidelines allow.
MAX_STATUS_LINE = 8192
#: Of that, what the problem text may take, so some perfdata always fits after it.
MAX_STATUS_TEXT = 2048

_THRESHOLD_RE = re.compile(r"\s*([a-z0-9]+)\s*(>=|<=|>|<)\s*([^\s%]+)\s*%?\s*", re.IGNORECASE)


def worst(states: Iterable[State]) -> State:
    """The most severe of `states` by Icinga ranking; OK when there are none."""
    return max(states, key=_SEVERITY.__getitem__, default=State.OK)


def _fmt(value: float) -> str:
    """A number as a person writes it: 97, 97.5, 0.42."""
    return str(int(value)) if float(value).is_integer() else str(round(value, 2))


@dataclass(frozen=True, slots=True)
class Threshold:
    """`metric op limit`, e.g. disk > 85: breached when the comparison holds."""

    metric: str
    op: str
    limit: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"unknown metric {self.metric!r} (known: {', '.join(METRICS)})")
        if self.op not in _OPERATORS:
            raise ConfigError(f"unknown operator {self.op!r} (use >, >=, < or <=)")
        if not math.isfinite(self.limit):
            raise ConfigError(f"limit of {self.metric} must be a finite number")

    def breached_by(self, value: float) -> bool:
        """Whether `value` is on the alerting side of the limit."""
        return _OPERATORS[self.op](value, self.limit)

    def describe(self, value: float) -> str:
        """How `value` breaches this threshold, e.g. "disk 97% > 95"."""
        unit = "%" if self.metric in _PERCENT_METRICS else ""
        return f"{self.metric} {_fmt(value)}{unit} {self.op} {_fmt(self.limit)}"

    def perf_range(self) -> str:
        """The plugin-guidelines range alerting like this threshold ("80" or "10:")."""
        return _fmt(self.limit) if self.op in (">", ">=") else f"{_fmt(self.limit)}:"

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{_fmt(self.limit)}"


def parse_thresholds(spec: str, where: str | None = None) -> list[Threshold]:
    """Parse `cpu>80,disk>85,mem>=95`; an empty spec means no thresholds.

    Args:
        spec: comma-separated `metric op number`, an optional "%" after the number.
        where: what to name in errors, e.g. the option "--critical".

    Raises:
        ConfigError: naming the first part that is not a valid threshold.
    """
    if not spec.strip():
        return []
    thresholds = []
    for part in spec.split(","):
        if not part.strip():
            raise ConfigError(f"empty threshold in {spec.strip()!r} (stray comma?)", where)
        match = _THRESHOLD_RE.fullmatch(part)
        if match is None:
            raise ConfigError(f"bad threshold {part.strip()!r}: expected metric, operator, number "
                              f"as in 'disk>85'", where)
        metric, op, number = match.groups()
        try:
            thresholds.append(Threshold(metric.lower(), op, float(number)))
        except ValueError:
            raise ConfigError(f"bad threshold {part.strip()!r}: {number!r} is not a number", where) from None
        except ConfigError as exc:
            raise ConfigError(f"bad threshold {part.strip()!r}: {exc.reason}", where) from None
    return thresholds


@dataclass(frozen=True, slots=True)
class HostCheck:
    """One host's verdict, why, and the measured values of the checked metrics."""

    host: str
    state: State
    problems: tuple[str, ...]
    values: tuple[tuple[str, float | None], ...] = ()

    def summary(self) -> str:
        """The host's problems for the status line, e.g. "web03 disk 97% > 95"."""
        return f"{self.host} {', '.join(self.problems)}"

    def line(self) -> str:
        """One long-output line: state and problems, or the values when all is well."""
        if self.problems:
            return f"{self.host}: {self.state.name} - {'; '.join(self.problems)}"
        shown = ", ".join(f"{m} {_fmt(v)}{'%' if m in _PERCENT_METRICS else ''}"
                          for m, v in self.values if v is not None)
        return f"{self.host}: OK - {shown}" if shown else f"{self.host}: OK"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The fleet's verdict: `status` is the plugin exit status."""

    status: State
    hosts: tuple[HostCheck, ...]
    perfdata: tuple[str, ...] = ()

    def _by_severity(self) -> list[HostCheck]:
        ranked = sorted(self.hosts, key=lambda h: host_order_key(h.host))
        return sorted(ranked, key=lambda h: -_SEVERITY[h.state])

    def _text(self) -> str:
        bad = [h for h in self._by_severity() if h.state is not State.OK]
        if not self.hosts:
            return "no hosts"
        if not bad:
            return f"{len(self.hosts)} host{'s' if len(self.hosts) != 1 else ''} ok"
        text = "; ".join(h.summary() for h in bad[:MAX_SUMMARY_HOSTS])
        if len(text.encode()) > MAX_STATUS_TEXT:
            text = text.encode()[:MAX_STATUS_TEXT - 3].decode(errors="ignore") + "..."
        if len(bad) > MAX_SUMMARY_HOSTS:
            text += f"; and {len(bad) - MAX_SUMMARY_HOSTS} more"
        return text

    def _split_perfdata(self) -> tuple[list[str], list[str]]:
        """The perfdata items that fit on the status line, and the rest."""
        size = len(f"SHOAL {self.status.name} - {self._text()} |".encode())
        for i, item in enumerate(self.perfdata):
            size += 1 + len(item.encode())
            if size > MAX_STATUS_LINE:
                return list(self.perfdata[:i]), list(self.perfdata[i:])
        return list(self.perfdata), []

    def line(self) -> str:
        """The plugin status line, `SHOAL STATE - text | perfdata`, at most MAX_STATUS_LINE bytes."""
        first, _ = self._split_perfdata()
        perf = f" | {' '.join(first)}" if first else ""
        return f"SHOAL {self.status.name} - {self._text()}{perf}"

    def details(self) -> list[str]:
        """Long output: one line per host, worst first."""
        return [h.line() for h in self._by_severity()]

    def output(self) -> list[str]:
        """Everything to print: the status line, the long output, then perfdata that did not fit."""
        _, rest = self._split_perfdata()
        lines = [self.line(), *self.details()]
        if rest:
            lines[-1] += f" | {rest[0]}"
            lines += rest[1:]
        return lines


def _clean(text: str) -> str:
    """Free text made safe for a status line: one line, no "|" (it starts perfdata)."""
    return " ".join(text.replace("|", "/").split())


def _check_metric(metric: str, value: float | None, warn: Sequence[Threshold],
                  crit: Sequence[Threshold]) -> tuple[State, str | None]:
    """The state one metric puts a host in, and the problem to report."""
    if value is None:
        return State.UNKNOWN, f"no {metric} data"
    for state, thresholds in ((State.CRITICAL, crit), (State.WARNING, warn)):
        for threshold in thresholds:
            if threshold.metric == metric and threshold.breached_by(value):
                return state, threshold.describe(value)
    return State.OK, None


def _checked_metrics(warn: Sequence[Threshold], crit: Sequence[Threshold]) -> list[str]:
    names = {t.metric for t in (*crit, *warn)}
    return [m for m in METRICS if m in names]


def _check_host(host: str, snapshot: Mapping[str, Any] | str | None, warn: Sequence[Threshold],
                crit: Sequence[Threshold], unreachable_state: State) -> HostCheck:
    reason = failure_reason(snapshot)
    checked = _checked_metrics(warn, crit)
    unknown = tuple((m, None) for m in checked)
    if isinstance(snapshot, str):
        return HostCheck(_clean(host), unreachable_state, (f"unreachable ({_clean(str(reason))})",), unknown)
    if not isinstance(snapshot, Mapping):
        return HostCheck(_clean(host), State.UNKNOWN, (str(reason),), unknown)
    states: list[State] = []
    problems: list[str] = []
    values: list[tuple[str, float | None]] = []
    for metric in checked:
        value = metric_value(snapshot, metric)
        state, problem = _check_metric(metric, value, warn, crit)
        states.append(state)
        problems += [problem] if problem else []
        values.append((metric, value))
    return HostCheck(_clean(host), worst(states), tuple(problems), tuple(values))


def _perf_label(text: str) -> str:
    """Quote a perfdata label: "=" is not allowed in one, a quote is doubled."""
    return "'" + text.replace("=", "_").replace("'", "''") + "'"


def _perfdata(check: HostCheck, warn: Sequence[Threshold], crit: Sequence[Threshold]) -> list[str]:
    """`'host_metric'=value[uom];warn;crit;min;max` for every checked metric of every host.

    A value we could not get is "U" (the guidelines' "undetermined"), so a graph keeps
    its series while a host is down; every host is listed, so changing a threshold
    never makes a series appear or vanish.
    """
    items = []
    for metric, value in check.values:
        percent = metric in _PERCENT_METRICS
        ranges = [next((t.perf_range() for t in ts if t.metric == metric), "") for ts in (warn, crit)]
        shown = "U" if value is None else f"{_fmt(value)}{'%' if percent else ''}"
        fields = [shown, *ranges, "0", "100" if percent else ""]
        items.append(f"{_perf_label(f'{check.host}_{metric}')}={';'.join(fields).rstrip(';')}")
    return items


def evaluate(host_snapshots: Snapshots, warn: Sequence[Threshold], crit: Sequence[Threshold],
             unreachable_state: int = State.CRITICAL) -> CheckResult:
    """Judge every host against `warn` and `crit`; the fleet gets the worst state.

    Args:
        host_snapshots: host name -> snapshot, failure reason (str) or None.
        warn, crit: thresholds; a metric breaching both reports the critical one.
        unreachable_state: 2 (CRITICAL) or 3 (UNKNOWN) for a host given as a reason.

    Returns:
        the result; UNKNOWN when there are no hosts at all (nothing was checked).

    Raises:
        ConfigError: `unreachable_state` is neither 2 nor 3.
    """
    if unreachable_state not in (State.CRITICAL, State.UNKNOWN):
        raise ConfigError(f"unreachable state must be 2 (CRITICAL) or 3 (UNKNOWN), got {unreachable_state}")
    hosts = sorted(host_snapshots, key=host_order_key)
    checks = tuple(_check_host(h, host_snapshots[h], warn, crit, State(unreachable_state)) for h in hosts)
    status = worst(c.state for c in checks) if checks else State.UNKNOWN
    perfdata = tuple(item for c in checks for item in _perfdata(c, warn, crit))
    return CheckResult(status, checks, perfdata)
