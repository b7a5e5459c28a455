"""`@message` classes behave as the frozen, slotted dataclasses they replace."""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import pytest

from shoal.protocol.messageclass import field, message, message_fields, replace
from shoal.protocol.messages import MESSAGE_CLASSES, Exec, Hello, Message, MessageType


@message
class Point:
    KIND: ClassVar[str] = "point"
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)


@message
class Point3(Point):
    z: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class DataPoint:
    x: int
    y: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)


@pytest.mark.parametrize("cls", list(MESSAGE_CLASSES.values()), ids=lambda c: c.TYPE.name)
def test_every_message_is_declared_with_the_decorator(cls: type[Message]) -> None:
    """A message declared with @dataclass on top of Message would lose request_id."""
    assert message_fields(cls)[0] == "request_id"
    assert set(message_fields(cls)) == {name for c in cls.__mro__ for name in getattr(c, "__slots__", ())}


def test_it_builds_equals_and_shows_like_a_dataclass() -> None:
    for args, kwargs in [((1,), {}), ((1, 2), {}), ((1,), {"tags": ["a"]}), ((), {"x": 1, "y": 2})]:
        ours, theirs = Point(*args, **kwargs), DataPoint(*args, **kwargs)  # type: ignore[arg-type]
        assert repr(ours) == repr(theirs).replace("DataPoint", "Point")
        assert ours == Point(*args, **kwargs) and ours != Point(9)  # type: ignore[arg-type]
    assert Point(1) != DataPoint(1) and Point3(1) != Point(1)
    assert hash(Point3(1, 2, z=3, tags=())) == hash(Point3(1, 2, (), 3))  # type: ignore[arg-type]
    assert Point.KIND == "point" and Point.__match_args__ == ("x", "y", "tags")


def test_defaults_and_factories() -> None:
    a, b = Point(1), Point(1)
    assert (a.y, a.tags, message_fields(Point3)) == (0, [], ("x", "y", "tags", "z"))
    assert a.tags is not b.tags  # a fresh list for each message


def test_it_is_frozen_and_slotted() -> None:
    p = Point(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del p.x  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.__dict__
    assert p.x == 1


def test_copies_are_equal_and_separate() -> None:
    p = Point3(1, tags=["a"], z=2)
    shallow, deep = copy.copy(p), copy.deepcopy(p)
    assert shallow == deep == p and shallow.tags is p.tags and deep.tags is not p.tags


@pytest.mark.parametrize(("args", "kwargs", "error"), [
    ((), {}, "missing required argument: 'x'"),
    ((1, 2, [], 4), {}, "takes 3 positional arguments but 4 were given"),
    ((1,), {"x": 2}, "multiple values for argument 'x'"),
    ((1,), {"w": 2}, "unexpected keyword argument 'w'"),
])
def test_bad_arguments_are_type_errors(args: tuple[object, ...], kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(TypeError, match=error):
        Point(*args, **kwargs)  # type: ignore[arg-type]


def test_replace_checks_the_copy_as_a_new_message() -> None:
    hello = Hello(0, role="agent")
    assert replace(hello, nonce="ab") == Hello(0, role="agent", nonce="ab") and hello.nonce == ""
    with pytest.raises(Exception, match="bad role"):
        replace(hello, role="nobody")
    assert replace(Exec(1, shell="true"), cwd="/") == Exec(1, shell="true", cwd="/")


def test_declaration_mistakes_fail_at_once() -> None:
    with pytest.raises(ValueError, match="mutable default"):
        @message
        class Listed:
            items: list[int] = []
    with pytest.raises(TypeError, match="without a default follows"):
        @message
        class Ordered:
            a: int = 0
            b: int


def test_a_subclass_without_the_decorator_cannot_be_built() -> None:
    class Forgot(Message):
        TYPE = MessageType.PING
        t0: float = 0.0

    with pytest.raises(TypeError, match="Forgot is not declared with @message"):
        Forgot(0)
