"""A snapshot of a live Pyro object graph, and the readable difference of two.

Serialization must not change the object being serialized: not one ``__dict__``
replaced, not one attribute rebound, not one registry item added or lost.  A
:class:`Snapshot` records the identity of every reachable ``__dict__``, of each
of its values and of the items of its containers, each under a readable path
(``guide._modules['0'].__dict__['master']``), so that ``before == after`` proves
it and :meth:`Snapshot.diff` says what changed.  ``audit``, ``check`` and the
test suite all use it.
"""

from __future__ import annotations

import weakref
from typing import Any

#: (id of the object, id of its __dict__, attribute -> id of value,
#:  container attribute -> ids of its keys/items)
Record = tuple[int, int, dict[str, int], dict[str, list[tuple[Any, int]]]]

_CONTAINERS = (dict, list, set)


def describe(value: Any) -> str:
    """A few words for a value in a difference: ``None``, ``weakref``, a type name."""
    if value is None:
        return "None"
    if isinstance(value, weakref.ref):
        return "weakref" if value() is not None else "dead weakref"
    return type(value).__name__


def _items(container: Any) -> list[tuple[Any, int]]:
    if isinstance(container, dict):
        return [(key, id(item)) for key, item in container.items()]
    return [(index, id(item)) for index, item in enumerate(container)]


def _reachable(roots: dict[str, Any]) -> dict[str, Any]:
    """path -> object, for every object serialization could touch: the roots, their
    submodules, Parameters and buffers, EasyGuide groups, param-store tensors, and
    modules or Pyro objects held in the attributes of a root that is neither."""
    import torch

    found: dict[str, Any] = {}
    seen: set[int] = set()

    def add(path: str, obj: Any) -> bool:
        if id(obj) in seen or not hasattr(obj, "__dict__"):
            return False
        seen.add(id(obj))
        found[path] = obj
        return True

    def visit(path: str, obj: Any) -> None:
        if not add(path, obj):
            return
        attributes = obj.__dict__
        if isinstance(obj, torch.nn.Module):
            # Named from the outermost module, before its submodules claim them.
            for name, parameter in obj.named_parameters():
                add(f"Parameter {name!r}", parameter)
            for name, buffer in obj.named_buffers():
                add(f"buffer {name!r}", buffer)
            for name, child in attributes.get("_modules", {}).items():
                if child is not None:
                    visit(f"{path}._modules[{name!r}]", child)
        else:
            for name, value in attributes.items():
                module = type(value).__module__ or ""
                if isinstance(value, torch.nn.Module) or module.split(".")[0] == "pyro":
                    visit(f"{path}.{name}", value)
        groups = attributes.get("groups")
        if isinstance(groups, dict):
            for name, group in groups.items():
                visit(f"{path}.groups[{name!r}]", group)
        params = attributes.get("_params")  # the param store
        if isinstance(params, dict):
            for name, tensor in params.items():
                add(f"param {name!r}", tensor)

    for name, root in roots.items():
        visit(name, root)
    return found


class Snapshot:
    """Identities in a live object graph; equal snapshots mean nothing changed."""

    def __init__(self, **roots: Any) -> None:
        self.records: dict[str, Record] = {}
        #: (path, attribute) -> a description of the value, for :meth:`diff`
        self.values: dict[tuple[str, str], str] = {}
        for path, obj in _reachable(roots).items():
            attributes = obj.__dict__
            self.records[path] = (
                id(obj),
                id(attributes),
                {name: id(value) for name, value in attributes.items()},
                {
                    name: _items(value)
                    for name, value in attributes.items()
                    if isinstance(value, _CONTAINERS)
                },
            )
            for name, value in attributes.items():
                self.values[path, name] = describe(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and self.records == other.records

    def __hash__(self) -> int:
        raise TypeError("Snapshot is not hashable")

    def __repr__(self) -> str:
        return f"<Snapshot of {len(self.records)} objects>"

    def diff(self, after: Snapshot) -> list[str]:
        """What changed from this snapshot to ``after``, one readable line each."""
        lines = []
        for path, record in self.records.items():
            now = after.records.get(path)
            if now is None:
                lines.append(f"{path}: no longer reachable")
                continue
            if now[0] != record[0]:
                lines.append(f"{path}: replaced by another object")
                continue
            if now[1] != record[1]:
                lines.append(f"{path}.__dict__: replaced by another dict")
            lines.extend(self._attribute_changes(path, record, now, after))
        lines.extend(
            f"{path}: newly reachable" for path in after.records if path not in self.records
        )
        return lines

    def _attribute_changes(
        self, path: str, record: Record, now: Record, after: Snapshot
    ) -> list[str]:
        before_values, after_values = record[2], now[2]
        lost = [name for name in before_values if name not in after_values]
        gained = [name for name in after_values if name not in before_values]
        lines = []
        if lost:
            lines.append(f"{path}.__dict__: lost {', '.join(map(repr, lost))}")
        if gained:
            lines.append(f"{path}.__dict__: gained {', '.join(map(repr, gained))}")
        for name, identity in before_values.items():
            if name in after_values and after_values[name] != identity:
                was, now_is = self.values[path, name], after.values[path, name]
                lines.append(
                    f"{path}.__dict__[{name!r}]: {was} -> "
                    f"{'another ' if now_is == was else ''}{now_is}"
                )
            elif record[3].get(name) != now[3].get(name) and name in now[3]:
                before_items, after_items = dict(record[3][name]), dict(now[3][name])
                changed = [
                    repr(key)
                    for key in {**before_items, **after_items}
                    if before_items.get(key) != after_items.get(key)
                ]
                lines.append(f"{path}.__dict__[{name!r}]: items changed: {', '.join(changed)}")
        return lines


def snapshot(obj: Any, name: str = "guide", **more: Any) -> Snapshot:
    """A :class:`Snapshot` of ``obj`` (called ``name`` in paths) and of ``more`` roots."""
    return Snapshot(**{name: obj}, **more)
