"""Stage 3: the checks.  The unpickled state, checked whole before anything is
built: the shape pyro writes (:func:`check_store`, :func:`check_optim`), each
tensor against its data, each constraint's attributes, no constraint whose
tensors broadcast past what the file holds, and how deep and how large the state
is along every path, within the limits below.

The budget these limits keep, for any file, refused or loaded (``tests/
test_load_budget.py`` holds it over the worst file of each limit):

* memory: the loader's Python objects peak at :data:`BUDGET_MEMORY` (``K`` bytes
  a byte of the file, plus a constant); the tensors it builds hold exactly the
  file's storage records, and an optimizer file's state, cast by
  ``Optimizer.load_state_dict``, at most :data:`REFERENCED` times the file;
* time: linear in the file's size, at most :data:`BUDGET_CALLS` function calls
  (``K`` a byte, plus a constant), each of bounded work;
* every limit is compared before the work or the memory it bounds is spent: a
  container's length before it is walked, the archive's records as its directory
  is read, a constraint's tensors against the slice of its parameter each part
  checks before a value is transformed, optimizer state in the dtype it will be
  cast to before it is cast.
"""

from __future__ import annotations

from types import MappingProxyType

from .messages import (
    LOOKS,
    OPTIM,
    STORE,
    describe,
    dims,
    first_keys,
    other_kind,
    refuse,
    render,
    short,
    type_name,
)
from .records import SCALARS, Counter, Hooks, Object, Storage, Tensor, itemsize

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, NoReturn

    from .messages import Kind, Where

    Within = tuple[tuple[int, ...], int, list[tuple[int, ...]], list[Any]]

#: What a load may cost in Python memory (tracemalloc's peak), in bytes: a multiple
#: of the file's size, and a constant.  The worst file known: empty dicts in an
#: optimizer state, one pickle byte each, peak at some 145 bytes a file byte (the
#: unpickled dict and the built one; only objects the pickle refers to twice are
#: remembered by the checks and the build).
BUDGET_MEMORY = (192, 64 * 2**20)
#: What a load may cost in time, as Python and C function calls: a multiple of the
#: file's size, and a constant (the worst file known makes some 32 a byte).
BUDGET_CALLS = (64, 1_000_000)
#: Nesting that a genuine constraint or optimizer state never comes near, counted
#: along every path.
MAX_DEPTH = 32
#: Objects in one entry (a parameter's constraint, a parameter's optimizer state),
#: shared references counted as copies; and in the whole state.
MAX_ENTRY_NODES = 10_000
MAX_NODES = 2_000_000
#: Steps of the broadcast check (an object looked at, an axis compared), all the
#: distinct constraints of a file together: a genuine file takes 2 a parameter (a
#: scalar bound) to some 10 (tensor bounds), 650,000 at most at 65,000 parameters.
MAX_FITS_WORK = 2_000_000
#: The tensors of an optimizer file, in bytes, each reference counted as a copy
#: (``Optimizer.load_state_dict`` casts each one separately) and each element as
#: :data:`CAST_ITEMSIZE` bytes at least, at most this many times the file's size.  A
#: file that pyro saves refers to each storage's data once; Adam's state for a
#: float16 parameter counts 4 times its data, for a float32 one twice.
REFERENCED = 4
#: ``Optimizer.load_state_dict`` casts every state tensor but ``step`` to its
#: parameter's dtype when the parameter is floating
#: (``_process_value_according_to_param_policy``), which no check here can know:
#: counted as the widest floating dtype, float64, so a uint8 state cast for a
#: float64 parameter costs no more than the count says.
CAST_ITEMSIZE = 8


#: Attribute names a loaded tensor may not carry though torch would set them: the
#: methods that the load (``Optimizer.load_state_dict`` casts each state tensor
#: with ``to``) and pyro's param store (``pyro.param`` on a loaded value) call on
#: it, which an attribute would hide, and ``_is_param``, which makes
#: ``isinstance(tensor, torch.nn.Parameter)`` true for a plain tensor.
RESERVED = ("_is_param", "contiguous", "requires_grad_", "to")


class Check:
    """One pass over an unpickled state: its shape, each tensor against its data,
    each constraint's attributes, and how deep and how large it is along every path
    (each distinct object is looked into once; a shared one counts as often as it
    is reached)."""

    def __init__(self, filename: Any, kind: Kind, length: int, shared: set[int]) -> None:
        self.filename, self.kind = filename, kind
        self.length = length  # the file's size in bytes
        self.shared = shared  # the ids of the objects the pickle refers to again
        #: id of a shared object -> (height, expanded size, expanded tensor bytes)
        self.seen: dict[int, tuple[int, int, int]] = {}
        self.referenced = 0  # tensor bytes of the entries so far, shared ones as copies
        self.open: set[int] = set()  # the objects the walk is inside of
        self.attributes: dict[type, frozenset[str]] = {}  # this load's own
        #: constraint id -> (its tensors' hull, their elements, their shapes, and the
        #: _Cat and _Stack constraints within it): all its tensors, or those outside them
        self.tensor_shapes: dict[int, Within] = {}
        self.direct_shapes: dict[int, Within] = {}
        #: (constraint id, shape) -> the elements it makes beyond the shape's own
        self.excesses: dict[tuple[int, tuple[int, ...]], int] = {}
        self.work = 0  # steps of the broadcast check, all constraints together

    def refuse(self, where: Where, what: str, fix: str = "") -> NoReturn:
        refuse(self.filename, self.kind, render(where), what, fix)

    def entries(self, mapping: Any, where: str, depth: int) -> int:
        """The entries of a top-level dict, each within :data:`MAX_ENTRY_NODES`; the
        expanded size of them all."""
        total = 1
        for key, value in mapping.items():
            # An optimizer that outlived its parameters (pyro.clear_param_store()
            # between runs) keys their state None: PyroOptim.get_state() writes it.
            if type(key) is not str and not (key is None and not self.kind.constraints):
                self.refuse(where or "it", f"has a key of type {type_name(key)}, not a name")
            _, size, nbytes = self.value(value, (where, "[", key), depth + 1)
            total += size
            self.referenced += nbytes
            if total > MAX_NODES:
                self.refuse(where or "it", f"holds more than {MAX_NODES} objects")
        return total

    def value(self, value: Any, where: Where, depth: int) -> tuple[int, int, int]:
        """``value``'s height, expanded size and expanded tensor bytes."""
        if type(value) in SCALARS:
            return 0, 1, 0
        key = id(value)
        known = self.seen.get(key)
        if known is not None:
            if depth + known[0] > MAX_DEPTH:
                self.refuse(where, f"is nested more than {MAX_DEPTH} levels deep")
            return known
        if key in self.open:
            self.refuse(where, "refers back to an object that contains it (a cycle)")
        if depth > MAX_DEPTH:
            self.refuse(where, f"is nested more than {MAX_DEPTH} levels deep")
        kind = type(value)
        nbytes = 0
        # The children are made one at a time, after their count is compared with
        # the limit: a list of a million Nones is refused before it is walked.
        children: Iterable[tuple[Any, Where]]
        if kind is dict:
            count = len(value)
            children = ((item, (where, "[", name)) for name, item in value.items())
        elif kind is list or kind is tuple:
            count = len(value)
            children = ((item, (where, "[", index)) for index, item in enumerate(value))
        elif kind is Tensor:
            # A tensor's Python attributes are walked like any other value: their
            # tensors are checked, and counted in the budget, like any tensor.
            nbytes = self.tensor(value, where)
            attributes = self.tensor_attributes(value, where)
            count = len(attributes)
            children = ((item, (where, ".", name)) for name, item in attributes)
        elif kind is Object:
            attributes = self.state(value, where)
            count = len(attributes)
            children = ((item, (where, ".", name)) for name, item in attributes)
        elif kind is Counter:
            self.counter(value, where)
            count = len(value.counts)
            children = ((tally, (where, "[", name)) for name, tally in value.counts.items())
        else:
            self.refuse(where, f"is {describe(value)}")
        if 1 + count > MAX_ENTRY_NODES:
            self.too_many(where)
        self.open.add(key)
        height, size = 0, 1
        for child, inner in children:
            child_height, child_size, child_bytes = self.value(child, inner, depth + 1)
            height = max(height, child_height + 1)
            size += child_size
            nbytes += child_bytes
            if size > MAX_ENTRY_NODES:
                self.too_many(where)
        self.open.discard(key)
        if key in self.shared:  # any other object is reached once
            self.seen[key] = (height, size, nbytes)
        return height, size, nbytes

    def too_many(self, where: Where) -> NoReturn:
        self.refuse(
            where,
            f"expands to more than {MAX_ENTRY_NODES} objects (shared references "
            "counted as the copies pyro and torch make of them)",
        )

    def tensor(self, tensor: Tensor, where: Where) -> int:
        """Checks the tensor against its data; its bytes (in an optimizer file, once
        cast: :data:`CAST_ITEMSIZE`; a param-store file's tensors are not cast)."""
        args = tensor.args
        if tensor.parameter:
            wrapped = args[0] if args else None
            if not (
                len(args) in (3, 4)
                and type(wrapped) is Tensor
                and not wrapped.parameter
                and wrapped.state is None
            ):
                self.refuse(where, "is a Parameter that does not wrap a tensor")
            if type(args[1]) is not bool or type(args[2]) is not Hooks:
                self.refuse(where, "is a Parameter with hooks or no requires_grad flag")
            return self.tensor(args[0], where)
        if len(args) not in (6, 7):
            self.refuse(where, f"is a tensor rebuilt from {len(args)} arguments")
        storage, offset, size, stride, requires_grad, hooks = args[:6]
        if type(storage) is not Storage:
            self.refuse(where, f"is a tensor whose storage is {describe(storage)}")
        if type(requires_grad) is not bool or type(hooks) is not Hooks:
            self.refuse(where, "is a tensor with backward hooks or no requires_grad flag")
        if len(args) == 7 and args[6] not in (None, {}):
            self.refuse(where, "is a tensor with metadata (a conjugate or negative view)")
        ints = (size, stride)
        if not all(type(shape) is tuple and all(type(n) is int for n in shape) for shape in ints):
            self.refuse(where, "is a tensor whose size or stride is not a tuple of integers")
        if len(size) != len(stride) or len(size) > 64 or type(offset) is not int or offset < 0:
            self.refuse(
                where,
                f"is a tensor of size {dims(size)}, stride {dims(stride)}, offset {short(offset)}",
            )
        numel, last, across = 1, offset, 1
        for extent, step in zip(size, stride, strict=True):
            # Stride 0 (an .expand()ed view: a bound of a site in a plate) is as torch
            # writes it; what it may cost is bounded where it is used: by its
            # parameter (Check.fits) and by the file's size (REFERENCED).
            if extent < 0 or step < 0:
                self.refuse(
                    where,
                    f"is a tensor of size {dims(size)} and stride {dims(stride)}, which no "
                    "tensor has",
                )
            numel *= extent
            across *= max(extent, 1)
            last += (extent - 1) * step
        held = storage.numel
        if not numel and across > self.length:
            self.refuse(
                where,
                f"is an empty tensor of size {dims(size)}: its other dimensions make "
                f"{across} elements, more than the file's {self.length} bytes (a constraint's "
                "transform or torch can make a tensor of that many elements from it)",
            )
        if numel and (last >= held or _paid(tensor) > held):
            self.refuse(
                where,
                f"is a tensor of size {dims(size)} (stride {dims(stride)}, offset {offset}) "
                f"over a storage of {held} elements: it needs data the file does not hold",
            )
        # torch's set_ takes an empty tensor at any offset (it reads nothing): a view
        # of an empty matrix's row (``torch.zeros(4, 0).unbind(0)``) has one past its
        # storage.  Its offset is bounded as its other dimensions are (by the file).
        if not numel and offset > max(held, self.length):
            self.refuse(where, f"is an empty tensor at offset {offset} of {held} elements")
        width = itemsize(storage.dtype)
        return numel * (width if self.kind.constraints else max(width, CAST_ITEMSIZE))

    def tensor_attributes(self, tensor: Tensor, where: Where) -> list[tuple[str, Any]]:
        """What torch sets on a tensor or a Parameter it rebuilds (``setattr`` of
        each item of its saved ``__dict__``: a user's ``param.name = value``, pyro's
        ``_pyro_subsample``), each value walked as any value of the state is.  A
        name that the class defines as a data descriptor (a property, a slot) is
        refused: it is never in a ``__dict__`` torch saves, and ``setattr`` would
        run its setter.  A method's name is accepted as torch accepts it (the value,
        never callable, is an instance attribute that hides the method on that one
        tensor, as it did in the program that saved it), but for :data:`RESERVED`,
        the names the load and pyro's param store rely on."""
        state = tensor.state
        if state is None:
            return []
        cls = "Parameter" if tensor.parameter else "tensor"
        if type(state) is not dict:
            self.refuse(where, f"is a {cls} whose attributes are {describe(state)}")
        import inspect

        import torch

        for name, value in state.items():
            defined = type(name) is str and (
                name.startswith("__")
                or name in RESERVED
                or hasattr(type(inspect.getattr_static(torch.nn.Parameter, name, None)), "__set__")
            )
            if type(name) is not str or defined:
                self.refuse(
                    where,
                    f"is a {cls} with the attribute {short(name)} = {short(value)} (a name "
                    "torch.nn.Parameter defines as a property or a slot, a dunder name, or a "
                    f"name the load or pyro relies on: {', '.join(RESERVED)})",
                )
        return list(state.items())

    def counter(self, counter: Counter, where: Where) -> None:
        """A ``collections.Counter``: names or indices, each counted by an int from
        1 to :data:`MAX_ENTRY_NODES` (a ``MultiStepLR``'s milestones, each as often
        as its list repeats it, which a file could list no more often: the next
        step computes ``gamma ** count``)."""
        for name, count in counter.counts.items():
            if (
                type(name) not in (str, int)
                or type(count) is not int
                or not 1 <= count <= MAX_ENTRY_NODES
            ):
                self.refuse(
                    where,
                    f"is a collections.Counter that counts {short(name)} as {short(count)}",
                )

    def state(self, obj: Object, where: Where) -> list[tuple[str, Any]]:
        """A constraint's attributes: only names its class's constructor sets, none
        of them a method or another descriptor of the class."""
        cls, state = obj.cls, obj.state
        if state is None:
            return []
        allowed = self.attributes.get(cls)
        if allowed is None:
            allowed = self.attributes[cls] = _constructor_attributes(cls)
        for name in state:
            if type(name) is not str or name not in allowed or _is_descriptor(cls, name):
                self.refuse(
                    where,
                    f"is a {cls.__qualname__} with an attribute {short(name)}, which its "
                    f"constructor does not set (it sets {sorted(allowed) or 'none'})",
                )
        which = _slicing(obj)
        if which is not None:
            self.slicing(which, state, where)
        return list(state.items())

    def slicing(self, which: str, state: dict[Any, Any], where: Where) -> None:
        """A ``_Cat`` or ``_Stack`` as its constructor makes it: a list of
        constraints, and (a ``_Cat``) a list of as many lengths.  Checked as the
        walk reaches it, before the broadcast check spends a step or an entry of
        its memory on a part."""
        parts, lengths = state.get("cseq"), state.get("lengths")
        if type(parts) is not list or not all(type(part) is Object for part in parts):
            self.refuse(where, f"is a {which} whose cseq is not a list of constraints")
        if which == "_Cat" and (type(lengths) is not list or len(lengths) != len(parts)):
            self.refuse(where, f"is a _Cat without a length for each of its {len(parts)} parts")

    def fits(self, constraint: Any, param: Tensor | None, where: Where) -> None:
        """No tensor of the constraint broadcasts past the part of the parameter it
        constrains: a ``_Cat`` hands each of its parts a slice of the parameter
        (``lengths`` along ``dim``), a ``_Stack`` one index along ``dim``, and every
        other constraint the whole of what it was handed.  What they make together
        (each part's slice broadcast with its tensors) is at most the parameter and
        the constraint's distinct tensors: what the file holds, each tensor counting
        the elements its data holds (an expanded one, those it repeats).  Each
        distinct constraint is looked into once, each (constraint, shape) pair
        compared once, and all of that work counts against :data:`MAX_FITS_WORK`.
        A constraint without its parameter (``param`` None: pyro's ``setdefault``
        keeps the constraint of a ``pyro.param`` whose initial value raised) is held
        against a scalar."""
        shape = _shape(param) if param is not None else ()
        _, tensors_held, shapes, _ = self.tensors_within(constraint, where, whole=True)
        if not shapes:
            return
        made = _numel(shape) + self.excess(constraint, shape, where)
        held = (_paid(param) if param is not None else 1) + tensors_held
        if made > held:
            listed = ", ".join(dims(each) for each in shapes[:4])
            more = f" and {len(shapes) - 4} more" if len(shapes) > 4 else ""
            self.refuse(
                where,
                f"has tensors of shapes {listed}{more} for a parameter of shape "
                f"{dims(shape)}: broadcast together they make {made} elements from {held} "
                "in the file (each with the part of the parameter it constrains)",
            )

    def excess(self, constraint: Any, shape: tuple[int, ...], where: Where) -> int:
        """The elements that checking (or transforming) a value of ``shape`` with
        ``constraint`` makes beyond ``shape``'s own, by broadcasting it with the
        constraint's tensors; each (constraint, shape) pair counted once."""
        key = (id(constraint), shape)
        known = self.excesses
        if key in known:
            return known[key]
        self.count_work(1 + len(shape), where)
        parts = _slices(constraint, shape)
        if parts is not None:
            if isinstance(parts, str):
                self.refuse(where, f"has a {constraint.cls.__qualname__} that {parts}")
            found = sum(self.excess(part, sliced, where) for part, sliced in parts)
        else:
            tail, _, shapes, nested = self.tensors_within(constraint, where, whole=False)
            found = _numel(_broadcast(shape, tail)) - _numel(shape) if shapes else 0
            found += sum(self.excess(inner, shape, where) for inner in nested)
        known[key] = found
        return found

    def tensors_within(
        self, constraint: Any, where: Where, *, whole: bool
    ) -> tuple[tuple[int, ...], int, list[tuple[int, ...]], list[Any]]:
        """The hull of the shapes of the distinct tensors within a (checked)
        constraint, their elements, their shapes, and (unless ``whole``) the
        ``_Cat`` and ``_Stack`` constraints within it, whose tensors are left to
        them; computed once a constraint."""
        cache = self.tensor_shapes if whole else self.direct_shapes
        known = cache.get(id(constraint))
        if known is not None:
            return known
        found: list[tuple[int, ...]] = []
        nested: list[Any] = []
        pending, visited = [constraint], set()
        hull: tuple[int, ...] = ()
        held = 0
        while pending:
            item = pending.pop()
            self.count_work(1, where)
            if type(item) in SCALARS or id(item) in visited:
                continue
            visited.add(id(item))
            if type(item) is Tensor:
                shape = _shape(item)
                self.count_work(len(shape), where)
                found.append(shape)
                held += _paid(item)
                hull = _broadcast(hull, shape)
            elif type(item) is Object and not whole and item is not constraint and _slicing(item):
                nested.append(item)
            elif type(item) is Object and item.state:
                pending.extend(item.state.values())
            elif type(item) in (list, tuple):
                pending.extend(item)
            elif type(item) is dict:
                pending.extend(item.values())
        known = cache[id(constraint)] = (hull, held, found, nested)
        return known

    def count_work(self, steps: int, where: Where) -> None:
        self.work += steps
        if self.work > MAX_FITS_WORK:
            self.refuse(
                where,
                f"is one of constraints whose tensors take more than {MAX_FITS_WORK} "
                "steps to compare with their parameters (distinct constraints that "
                "share many tensors)",
            )


#: The constraints that hand each of their parts a slice of the value
#: (``torch.distributions.constraints``): ``cat`` and ``stack``.
_SLICING = ("_Cat", "_Stack")


def _slicing(obj: Object) -> str | None:
    """``_Cat`` or ``_Stack`` if ``obj`` is one (or of a subclass), else None."""
    for klass in obj.cls.__mro__:
        if klass.__module__ == "torch.distributions.constraints" and klass.__name__ in _SLICING:
            return klass.__name__
    return None


def _slices(
    constraint: Any, shape: tuple[int, ...]
) -> list[tuple[Any, tuple[int, ...]]] | str | None:
    """The parts of a ``_Cat`` or ``_Stack`` and the shape of the slice each checks
    (as ``_Cat.check`` and ``CatTransform`` narrow, as ``_Stack.check`` and
    ``StackTransform`` select), or why they cannot slice ``shape``; None for any
    other constraint."""
    if type(constraint) is not Object:
        return None
    which = _slicing(constraint)
    if which is None:
        return None
    state = constraint.state or {}
    parts, dim = state.get("cseq"), state.get("dim", 0)
    if type(parts) is not list or type(dim) is not int or not -len(shape) <= dim < len(shape):
        return f"does not slice its parameter of shape {dims(shape)} (dim {short(dim)})"
    axis = dim % len(shape)
    if which == "_Stack":
        if shape[axis] != len(parts):
            return f"stacks {len(parts)} parts along an axis of {shape[axis]}"
        sliced = shape[:axis] + shape[axis + 1 :]
        return [(part, sliced) for part in parts]
    lengths = state.get("lengths", [1] * len(parts))
    if (
        type(lengths) is not list
        or len(lengths) != len(parts)
        or not all(type(length) is int and length >= 0 for length in lengths)
        or sum(lengths) != shape[axis]
    ):
        return (
            f"does not slice its parameter of shape {dims(shape)}: its lengths are not "
            f"{len(parts)} counts that add up to {shape[axis]}"
        )
    return [
        (part, (*shape[:axis], length, *shape[axis + 1 :]))
        for part, length in zip(parts, lengths, strict=True)
    ]


def _broadcast(shape: tuple[int, ...], other: tuple[int, ...]) -> tuple[int, ...]:
    """The smallest shape that holds both (right-aligned, each axis the larger)."""
    rank = max(len(shape), len(other))
    hull = [1] * rank
    for each in (shape, other):
        for axis, extent in enumerate(each, rank - len(each)):
            hull[axis] = max(hull[axis], extent)
    return tuple(hull)


def _shape(tensor: Tensor) -> tuple[int, ...]:
    args = tensor.args[0].args if tensor.parameter else tensor.args
    return tuple(args[2])


def _paid(tensor: Tensor) -> int:
    """The elements of the file's data that a tensor holds: an expanded (stride 0)
    axis repeats them, and adds none; overlapping axes (an ``unfold()`` view)
    hold no more than the span from its first element to its last."""
    args = tensor.args[0].args if tensor.parameter else tensor.args
    paid, span = 1, 1
    for extent, step in zip(args[2], args[3], strict=True):
        paid *= extent if step or not extent else 1
        span += (extent - 1) * step if extent else 0
    return min(paid, span) if paid else 0


def _numel(shape: tuple[int, ...]) -> int:
    numel = 1
    for extent in shape:
        numel *= extent
    return numel


def _constructor_attributes(cls: type) -> frozenset[str]:
    """The attribute names that the constructors of ``cls`` and its bases assign
    (``self.name = ...``): all a constraint's ``__dict__`` ever holds."""
    import dis

    names: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        code = getattr(init, "__code__", None)
        if code is not None:
            names.update(
                ins.argval for ins in dis.get_instructions(code) if ins.opname == "STORE_ATTR"
            )
    return frozenset(name for name in names if not name.startswith("__"))


def _is_descriptor(cls: type, name: str) -> bool:
    import inspect

    found = inspect.getattr_static(cls, name, None)
    return callable(found) or hasattr(type(found), "__get__") or hasattr(type(found), "__set__")


def check_store(check: Check, state: Any) -> None:
    """``{"params": {name: tensor}, "constraints": {name: constraint}}``, as
    ``ParamStoreDict.get_state()`` makes it."""
    if _is_optimizer_file(state):
        other_kind(check.filename, check.kind, LOOKS["optim"], f"Load it with {OPTIM.reader}.")
    if type(state) is not dict or set(state) != {"params", "constraints"}:
        keys = f" with keys {first_keys(state)}" if type(state) is dict else ""
        check.refuse(
            "",
            f"is {describe(state)}{keys}, not a dict with the keys 'params' and 'constraints'",
        )
    params, constraints = state["params"], state["constraints"]
    for key, value in (("params", params), ("constraints", constraints)):
        if type(value) is not dict:
            check.refuse(key, f"is {describe(value)}, not a dict of parameter names")
    for name, param in params.items():
        if type(param) is not Tensor:
            check.refuse(("params", "[", name), f"is {describe(param)}")
    for name, constraint in constraints.items():
        if type(constraint) is not Object:
            check.refuse(("constraints", "[", name), f"is {describe(constraint)}")
    for name in params:
        if name not in constraints:
            check.refuse(
                ("params", "[", name),
                "has no constraint (pyro writes one for every parameter, constraints.real "
                "for one declared without)",
            )
    total = check.entries(params, "params", 1)
    if check.referenced > REFERENCED * check.length:
        check.refuse(
            "params",
            f"hold {check.referenced} bytes of tensors (expanded ones and shared references "
            f"counted as the copies an operation on them makes), more than {REFERENCED} "
            f"times the file's {check.length} bytes",
        )
    total += check.entries(constraints, "constraints", 1)
    if total > MAX_NODES:
        check.refuse("", f"holds more than {MAX_NODES} objects")
    for name, constraint in constraints.items():
        # A constraint may outlive its parameter in a file pyro writes: pyro.param
        # sets it before the initial value, which may raise (pyro never uses it).
        check.fits(constraint, params.get(name), ("constraints", "[", name))


def _is_optimizer_file(state: Any) -> bool:
    """A state as ``PyroOptim.get_state()`` makes it (a plain loop: an interrupt
    leaves no generator to close)."""
    if type(state) is not dict or not state:
        return False
    for value in state.values():  # noqa: SIM110 (no generator: see above)
        if not _is_optimizer_state(value):
            return False
    return True


def _is_optimizer_state(value: Any) -> bool:
    """An optimizer's or a scheduler's entry of an optimizer file, by its keys."""
    return type(value) is dict and set(value) in (
        {"state", "param_groups"},
        {"scheduler", "optimizer"},
    )


def check_optim(
    check: Check, state: Any, scheduler: type | None = None, nested: str | None = None
) -> None:
    """``{param name: optimizer or scheduler state_dict()}``, as
    ``PyroOptim.get_state()`` makes it.  For a scheduler (the class that
    ``PyroLRScheduler`` makes, ``scheduler``), each scheduler state (the entry's
    ``nested`` key where pyro writes ``{"scheduler": ..., "optimizer": ...}``, else
    the entry) holds only names its ``state_dict()`` writes: torch's
    ``load_state_dict`` puts every name into the scheduler's ``__dict__``, where one
    that the class defines as a method or a property, or the scheduler's
    ``optimizer``, would hide the class's own."""
    if type(state) is not dict:
        check.refuse("", f"is {describe(state)}, not a dict of parameter names")
    if set(state) == {"params", "constraints"}:
        other_kind(check.filename, check.kind, LOOKS["store"], f"Load it with {STORE.reader}.")
    for name, value in state.items():
        if type(value) is not dict:
            check.refuse(("state", "[", name), f"is {describe(value)}, not a state_dict()")
        if scheduler is None:
            continue
        where: Where = ("state", "[", name)
        inner = value.get(nested) if nested is not None else value
        if type(inner) is not dict:
            check.refuse(where, f"holds no {nested!r} state_dict() for {scheduler.__qualname__}")
        _check_scheduler_state(check, scheduler, inner, (where, "[", nested) if nested else where)

    check.entries(state, "state", 0)
    if check.referenced > REFERENCED * check.length:
        check.refuse(
            "",
            f"refers to {check.referenced} bytes of tensors, counted in the dtype "
            "Optimizer.load_state_dict casts it to (a float64 parameter's, 8 bytes an "
            "element, at most) and shared references as the copies it makes of them, "
            f"more than {REFERENCED} times the file's {check.length} bytes",
        )


def _check_scheduler_state(
    check: Check, scheduler: type, value: dict[Any, Any], where: Where
) -> None:
    """A scheduler's state, as its ``state_dict()`` writes it: see :func:`check_optim`.
    The numbers torch's schedulers keep (:data:`_SCHEDULER_NUMBERS`) are numbers,
    an int within 64 bits: the next step computes with them (``gamma ** count``)."""
    for key, number in value.items():
        if key in _SCHEDULER_NUMBERS:
            numbers = number if _SCHEDULER_NUMBERS[key] and type(number) is list else [number]
            if not all(_is_number(each) for each in numbers):
                check.refuse(
                    (where, "[", key),
                    f"is {describe(number)}, not "
                    f"{'a list of numbers' if _SCHEDULER_NUMBERS[key] else 'a number'} "
                    "(an int within 64 bits, a float or a tensor)",
                )
        if type(key) is not str or key == "optimizer" or _is_descriptor(scheduler, key):
            check.refuse(
                (where, "[", key),
                f"is a name that {scheduler.__qualname__}'s state_dict() never writes: "
                "its load_state_dict() would set it on the scheduler, over "
                f"{'its optimizer' if key == 'optimizer' else 'what its class defines'}",
            )


#: The numbers in the state of torch's schedulers (``torch.optim.lr_scheduler``),
#: by name: True for a list of them (one a parameter group).
_SCHEDULER_NUMBERS = MappingProxyType(
    {
        **dict.fromkeys(
            [
                "T_0",
                "T_cur",
                "T_i",
                "T_max",
                "T_mult",
                "_step_count",
                "best",
                "cooldown",
                "cooldown_counter",
                "end_factor",
                "eps",
                "eta_min",
                "factor",
                "gamma",
                "last_epoch",
                "num_bad_epochs",
                "patience",
                "power",
                "start_factor",
                "step_ratio",
                "step_size",
                "threshold",
                "total_iters",
                "total_size",
                "total_steps",
            ],
            False,
        ),
        **dict.fromkeys(
            ["_last_lr", "base_lrs", "min_lrs", "max_lrs", "base_momentums", "max_momentums"], True
        ),
    }
)


def _is_number(value: Any) -> bool:
    """A float, a tensor (a learning rate may be one), or an int within 64 bits."""
    kind = type(value)
    return kind is float or kind is Tensor or (kind is int and -(2**63) <= value < 2**63)
