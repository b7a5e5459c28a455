"""Rolling runs: hosts in waves, a failure budget and canaries, as Ansible's `serial`,
`max_fail_percentage` and a first batch of one do.

A `WavePolicy` says how to cut the targets: `canary` hosts alone first, then waves
of `serial` hosts (a count, or a percentage of all targets rounded down and at least
1, as Ansible rounds `serial: 30%`). The next wave starts when the previous one has
finished, `wait` seconds later. The failure budget `max_fail` (a count, or a
percentage of all targets rounded down, so `10%` of 25 hosts is 2) is spent by every
host that did not exit 0: failed, signalled, timed out, unreachable or lost, as in
Ansible. Once MORE hosts than the budget have failed, or any canary has, no new host
starts (hosts already running finish) and every host not started is `skipped`.

`run_in_waves` is the per-host form, built on the one fan-out (`fan_out` bounds the
connections inside a wave); `RollingRun` is its state, for callers such as `put`
that schedule hosts in groups of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from shoal.protocol.errors import ConfigError

from shoal.controller.fanout import Limit, fan_out
from shoal.controller.outcome import Outcome
from shoal.controller.result import Result

__all__ = ["Count", "WavePolicy", "RollingRun", "parse_count", "run_in_waves", "skipped_result",
           "SKIPPED_STATUS"]

T = TypeVar("T")

# A skipped host's status: with the largest-status rule, a run stopped by its
# budget exits with the largest status among the hosts that ran, or 1 when every
# one of them succeeded.
SKIPPED_STATUS = 1


@dataclass(frozen=True, slots=True)
class Count:
    """`N` hosts, or `N%` of the targets."""

    value: int
    percent: bool = False

    def of(self, total: int, *, at_least: int = 0) -> int:
        """The count for `total` targets: percentages round down, then `at_least` applies."""
        n = total * self.value // 100 if self.percent else self.value
        return max(at_least, n)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def parse_count(text: str, option: str, *, minimum: int = 0) -> Count:
    """`N` or `N%` (0 to 100) as a Count.

    Raises:
        ConfigError: not a whole number, below `minimum`, or a percentage over 100.
    """
    percent = text.endswith("%")
    digits = text[:-1] if percent else text
    if not digits.isdigit() or int(digits) < minimum or (percent and int(digits) > 100):
        limit = f"{minimum} to 100%" if percent else f"a whole number of at least {minimum}"
        raise ConfigError(f"bad value {text!r}: expected {limit} (N or N%)", option)
    return Count(int(digits), percent)


@dataclass(frozen=True, slots=True)
class WavePolicy:
    """How a run rolls over its targets; the default runs them all as one wave.

    Args:
        serial: hosts per wave (None: all the rest in one).
        wait: seconds between the end of a wave and the start of the next.
        max_fail: hosts that may fail before the run stops (None: no budget).
        canary: hosts run alone first; any failure among them stops the run.
    """

    serial: Count | None = None
    wait: float = 0.0
    max_fail: Count | None = None
    canary: int = 0

    def waves(self, items: Sequence[T]) -> list[list[T]]:
        """Cut `items`, in order, into the waves they run in."""
        canary = min(self.canary, len(items))
        waves = [list(items[:canary])] if canary else []
        rest = list(items[canary:])
        size = self.serial.of(len(items), at_least=1) if self.serial else max(1, len(rest))
        waves += [rest[i:i + size] for i in range(0, len(rest), size)]
        return waves


class RollingRun:
    """One run's progress through its waves: failures so far and whether to go on."""

    def __init__(self, policy: WavePolicy, total: int) -> None:
        self.policy = policy
        self.budget = policy.max_fail.of(total) if policy.max_fail is not None else None
        self.failures = 0
        self.canary_failed = False
        self.wave = 0

    @property
    def stopped(self) -> bool:
        """True once the budget is exceeded or a canary failed: start no new host."""
        return self.canary_failed or (self.budget is not None and self.failures > self.budget)

    def record(self, result: Result) -> None:
        """Count one finished host against the budget."""
        if not result.ok and result.error_code != Outcome.SKIPPED:
            self.failures += 1
            self.canary_failed = self.canary_failed or (self.policy.canary > 0 and self.wave == 1)

    async def next_wave(self) -> None:
        """Wait `--serial-wait` between waves (not before the first)."""
        if self.wave and self.policy.wait > 0:
            await asyncio.sleep(self.policy.wait)
        self.wave += 1


def skipped_result(host: str) -> Result:
    """The Result of a host the run never started because it stopped first."""
    return Result(host, SKIPPED_STATUS, error="skipped", error_code=Outcome.SKIPPED)


async def run_in_waves(items: Sequence[T], work: Callable[[T], Awaitable[Result]], host: Callable[[T], str], *,
                       policy: WavePolicy, limit: Limit[T], on_done: Callable[[Result], None],
                       on_wave: Callable[[int, int, list[T]], None] | None = None) -> list[Result]:
    """Run `work` over `items` in the policy's waves, at most `limit` at once within one.

    Every item gets a Result, `skipped_result` for those never started; `on_done`
    sees each (skipped ones too) as it is known. `on_wave(number, count, items)` is
    called as each wave starts (1-based), never for a wave that is skipped whole.
    """
    state = RollingRun(policy, len(items))
    waves = policy.waves(items)
    results: list[Result] = []

    def done(result: Result) -> None:
        state.record(result)
        on_done(result)

    async def guarded(item: T) -> Result:
        if state.stopped:
            return skipped_result(host(item))
        return await work(item)

    for wave in waves:
        if state.stopped:
            skipped = [skipped_result(host(item)) for item in wave]
            for result in skipped:
                on_done(result)
            results += skipped
            continue
        await state.next_wave()
        if on_wave is not None:
            on_wave(state.wave, len(waves), wave)
        results += await fan_out(wave, guarded, limit=limit, on_done=done)
    return results
