"""The hub registry's memory of departed dial-in names: order, bound, case, return."""

from __future__ import annotations

from shoal.controller.hub.registry import Departed


def test_the_oldest_departure_is_forgotten_first_and_leaving_again_is_newest() -> None:
    departed = Departed(most=3)
    for name in ("a", "b", "c"):
        departed.left(name)
    departed.left("A")  # a left again (another spelling): now the newest, as last spelled
    departed.left("d")
    assert departed.names() == ["c", "A", "d"]


def test_a_name_that_returns_is_no_longer_departed_whatever_its_case() -> None:
    departed = Departed()
    departed.left("Web1")
    assert departed.maybe_when("WEB1") is not None
    departed.returned("web1")
    assert departed.names() == [] and departed.maybe_when("web1") is None


def test_forget_after_0_and_most_0_remember_nothing() -> None:
    for departed in (Departed(forget_after=0), Departed(most=0)):
        departed.left("gone")
        assert departed.names() == [] and len(departed) == 0
