"""`@message`: how a message class is declared, without generating code at import.

A message is declared as a frozen, slotted dataclass would be (typed fields in the
class body, defaults, `field(default_factory=...)`, an optional `__post_init__`)
and behaves like one: keyword or positional construction in field order, equality
and hash over the fields, a `Name(field=value, ...)` repr, assignment refused, copies.
`dataclasses` builds each of those methods from source text with `exec`, and with
`slots=True` builds the class twice: ~0.45 ms a class, ~15 ms over the messages, the
largest single cost of starting `shoal run`. Here the methods are shared functions
that read the class's field table (~0.02 ms a class), and the class is built once
more only to add its slots.

mypy learns the same from `dataclass_transform`: the synthesized `__init__`
signature, and that instances are frozen.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any, Callable, ClassVar, NoReturn, TypeVar, cast, dataclass_transform

__all__ = ["message", "field", "message_fields", "replace"]

_T = TypeVar("_T")
_C = TypeVar("_C", bound=type)
_M = TypeVar("_M")


class _Factory:
    """What `field(default_factory=...)` leaves in a class body for `@message` to find."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], _T]) -> _T:
    """A field whose default is made fresh for each message (a list, a dict)."""
    return cast(_T, _Factory(default_factory))


class _Layout:
    """A message class's fields in order, with their defaults and default factories."""

    __slots__ = ("names", "defaults", "factories")

    def __init__(self, names: tuple[str, ...], defaults: dict[str, Any], factories: dict[str, Callable[[], Any]]):
        self.names = names
        self.defaults = defaults
        self.factories = factories


# Every class `@message` built -> its layout. A subclass declared without `@message`
# has no entry, so building one fails at once instead of silently losing its fields.
_LAYOUTS: dict[type, _Layout] = {}
_NO_DEFAULT = object()


def message_fields(cls: type) -> tuple[str, ...]:
    """The field names of a `@message` class, in declaration order (bases first)."""
    return _LAYOUTS[cls].names


def replace(msg: _M, **changes: Any) -> _M:
    """A copy of `msg` with `changes` applied, checked as any new message is."""
    return type(msg)(**{name: getattr(msg, name) for name in message_fields(type(msg))} | changes)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def message(cls: _C) -> _C:
    """Make `cls` a frozen, slotted message class from its annotated fields."""
    base = next((_LAYOUTS[b] for b in cls.__mro__[1:] if b in _LAYOUTS), _Layout((), {}, {}))
    names = list(base.names)
    defaults, factories = dict(base.defaults), dict(base.factories)
    own = [name for name, note in cls.__dict__.get("__annotations__", {}).items() if not _is_classvar(note)]
    for name in own:
        value = cls.__dict__.get(name, _NO_DEFAULT)
        if isinstance(value, _Factory):
            factories[name] = value.make
        elif value is not _NO_DEFAULT:
            if isinstance(value, (list, dict, set)):
                raise ValueError(f"{cls.__name__}.{name}: mutable default; use field(default_factory=...)")
            defaults[name] = value
        if name not in names:
            names.append(name)
    _check_order(cls, names, defaults, factories)
    namespace = {key: value for key, value in cls.__dict__.items()
                 if key not in own and key not in ("__dict__", "__weakref__")}
    namespace["__slots__"] = tuple(name for name in own if name not in base.names)
    namespace["__qualname__"] = cls.__qualname__
    namespace["__match_args__"] = tuple(names)
    for key, method in _METHODS.items():
        namespace.setdefault(key, method)
    built = type(cls)(cls.__name__, cls.__bases__, namespace)
    _LAYOUTS[built] = _Layout(tuple(names), defaults, factories)
    return built



def _is_classvar(note: object) -> bool:
    if isinstance(note, str):
        return note.startswith(("ClassVar", "typing.ClassVar"))
    return note is ClassVar or getattr(note, "__origin__", None) is ClassVar


def _check_order(cls: type, names: list[str], defaults: dict[str, Any], factories: dict[str, Any]) -> None:
    """As for a dataclass: once a field has a default, every later one needs one."""
    seen_default = False
    for name in names:
        has_default = name in defaults or name in factories
        if seen_default and not has_default:
            raise TypeError(f"{cls.__name__}: field {name!r} without a default follows one with a default")
        seen_default = seen_default or has_default


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    layout = _LAYOUTS.get(cls)
    if layout is None:
        raise TypeError(f"{cls.__qualname__} is not declared with @message")
    names = layout.names
    if len(args) > len(names):
        raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments but {len(args)} were given")
    set_ = object.__setattr__
    for name, value in zip(names, args):
        if name in kwargs:
            raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
        set_(self, name, value)
    rest = names[len(args):] if args else names
    if len(kwargs) != len(rest) or not _all_given(self, rest, kwargs):
        _rest_with_defaults(self, cls, layout, rest, kwargs)
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


def _all_given(self: Any, rest: tuple[str, ...], kwargs: dict[str, Any]) -> bool:
    """Set every field from `kwargs` when it names each one (a decoded body, mostly)."""
    set_ = object.__setattr__
    try:
        for name in rest:
            set_(self, name, kwargs[name])
    except KeyError:
        return False
    return True


def _rest_with_defaults(self: Any, cls: type, layout: _Layout, rest: tuple[str, ...], kwargs: dict[str, Any]) -> None:
    set_ = object.__setattr__
    defaults = layout.defaults
    for name in rest:
        value = kwargs.pop(name, _NO_DEFAULT)
        if value is _NO_DEFAULT:
            value = defaults.get(name, _NO_DEFAULT)
            if value is _NO_DEFAULT:
                if name not in layout.factories:
                    raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
                value = layout.factories[name]()
        set_(self, name, value)
    if kwargs:  # what is left named no field
        raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {next(iter(kwargs))!r}")


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name in _LAYOUTS[type(self)].names)


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _LAYOUTS[type(self)].names)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: object) -> object:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _setattr(self: Any, name: str, value: object) -> NoReturn:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> NoReturn:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _getstate(self: Any) -> list[Any]:
    return list(_values(self))


def _setstate(self: Any, state: list[Any]) -> None:
    """Restore a copy's fields past the frozen `__setattr__` (copy.copy, copy.deepcopy)."""
    for name, value in zip(_LAYOUTS[type(self)].names, state):
        object.__setattr__(self, name, value)


_METHODS: dict[str, Any] = {
    "__init__": _init, "__repr__": _repr, "__eq__": _eq, "__hash__": _hash,
    "__setattr__": _setattr, "__delattr__": _delattr, "__getstate__": _getstate, "__setstate__": _setstate,
}
