"""A faster `__init__` for frozen, slotted dataclasses built once per event.

A frozen dataclass's generated `__init__` sets each field through `object.__setattr__` by
name (it must get past the class's own `__setattr__`, which refuses). Setting the slots
through their member descriptors does the same and costs less than half: 2.6 us against 6.4
for the 14 fields of `AuditEvent` on the project's 2-core box, and the runtime builds one or
two of those, an `Origin` and an `Output` per event. The class stays what it was (frozen,
slotted, compared and hashed by value, `dataclasses.replace` works); only the constructor's
body changes, with the same parameters, defaults and default factories.

Standard library only (detectors import `schemas.event`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")
_NO_VALUE = object()


def fast_init(cls: type[T]) -> type[T]:
    """Replace the generated `__init__` of the frozen, slotted dataclass `cls` with one that
    sets its slots directly. Refuses a class it cannot do that for, rather than differ."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__")
    scope: dict[str, Any] = {"_NO_VALUE": _NO_VALUE}
    args, body = [], []
    for i, f in enumerate(dataclasses.fields(cls)):  # type: ignore[arg-type]
        if not f.init or f.kw_only is True:
            raise TypeError(f"{cls.__name__}.{f.name} is not a positional __init__ parameter")
        setter = f"_set{i}"
        scope[setter] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            scope[f"_default{i}"] = f.default
            args.append(f"{f.name}=_default{i}")
            value = f.name
        elif f.default_factory is not dataclasses.MISSING:
            scope[f"_factory{i}"] = f.default_factory
            args.append(f"{f.name}=_NO_VALUE")
            value = f"_factory{i}() if {f.name} is _NO_VALUE else {f.name}"
        else:
            args.append(f.name)
            value = f.name
        body.append(f"    {setter}(self, {value})")
    source = "\n".join([f"def __init__(self, {', '.join(args)}):", *body])
    # The source is ours, from the class's field names; values are passed by reference.
    exec(compile(source, f"<fast_init {cls.__name__}>", "exec"), scope)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
