"""Stage 3: the checks.  The unpickled state, checked whole before anything is
built: the shape pyro writes (:func:`check_store`, :func:`check_optim`), each
tensor against its data, each constraint's attributes, no constraint whose
tensors broadcast past what the file holds, and how deep and how large the state
is along every path, within the limits below."""

from __future__ import annotations

from .messages import describe, dims, first_keys, refuse, render, short, type_name
from .records import SCALARS, Hooks, Object, Storage, Tensor, itemsize

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from .messages import Kind, Where

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
#: (``Optimizer.load_state_dict`` casts each one separately), at most this many times
#: the file's size: a file that pyro saves refers to each storage's data once.
REFERENCED = 2


class Check:
    """One pass over an unpickled state: its shape, each tensor against its data,
    each constraint's attributes, and how deep and how large it is along every path
    (each distinct object is looked into once; a shared one counts as often as it
    is reached)."""

    def __init__(self, filename: Any, kind: Kind, length: int) -> None:
        self.filename, self.kind = filename, kind
        self.length = length  # the file's size in bytes
        #: id -> (height, expanded size, expanded tensor bytes)
        self.seen: dict[int, tuple[int, int, int]] = {}
        self.referenced = 0  # tensor bytes of the entries so far, shared ones as copies
        self.open: set[int] = set()  # the objects the walk is inside of
        self.attributes: dict[type, frozenset[str]] = {}  # this load's own
        #: constraint id -> (its tensors' hull, their elements, their shapes)
        self.tensor_shapes: dict[int, tuple[tuple[int, ...], int, list[tuple[int, ...]]]] = {}
        self.work = 0  # steps of the broadcast check, all constraints together

    def refuse(self, where: Where, what: str, fix: str = "") -> NoReturn:
        refuse(self.filename, self.kind, render(where), what, fix)

    def entries(self, mapping: Any, where: str, depth: int) -> int:
        """The entries of a top-level dict, each within :data:`MAX_ENTRY_NODES`; the
        expanded size of them all."""
        total = 1
        for key, value in mapping.items():
            if type(key) is not str:
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
        if kind is dict:
            children = [(item, (where, "[", name)) for name, item in value.items()]
        elif kind is list or kind is tuple:
            children = [(item, (where, "[", index)) for index, item in enumerate(value)]
        elif kind is Tensor:
            nbytes = self.tensor(value, where)
            children = []
        elif kind is Object:
            children = [(item, (where, ".", name)) for name, item in self.state(value, where)]
        else:
            self.refuse(where, f"is {describe(value)}")
        self.open.add(key)
        height, size = 0, 1
        for child, inner in children:
            child_height, child_size, child_bytes = self.value(child, inner, depth + 1)
            height = max(height, child_height + 1)
            size += child_size
            nbytes += child_bytes
            if size > MAX_ENTRY_NODES:
                self.refuse(
                    where,
                    f"expands to more than {MAX_ENTRY_NODES} objects (shared references "
                    "counted as the copies pyro and torch make of them)",
                )
        self.open.discard(key)
        self.seen[key] = (height, size, nbytes)
        return height, size, nbytes

    def tensor(self, tensor: Tensor, where: Where) -> int:
        """Checks the tensor against its data; its bytes."""
        args = tensor.args
        if tensor.parameter:
            if not (len(args) == 3 and type(args[0]) is Tensor and not args[0].parameter):
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
            if extent < 0 or step < 0 or (step == 0 and extent > 1):
                self.refuse(
                    where,
                    f"is a tensor of size {dims(size)} and stride {dims(stride)}: it repeats "
                    "its data (stride 0, as .expand() makes), and every operation on it costs "
                    "as if the file held all of it",
                    fix="If you saved an expanded tensor yourself, save .clone() of it.",
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
        if numel and (last >= held or numel > held):
            self.refuse(
                where,
                f"is a tensor of size {dims(size)} (stride {dims(stride)}, offset {offset}) "
                f"over a storage of {held} elements: it needs data the file does not hold",
            )
        if not numel and offset > held:
            self.refuse(where, f"is an empty tensor at offset {offset} of {held} elements")
        return int(numel * itemsize(storage.dtype))

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
        return list(state.items())

    def fits(self, constraint: Any, param: Tensor, where: Where) -> None:
        """No tensor of the constraint broadcasts past its parameter: the smallest
        shape that holds them all and the parameter holds no more elements than the
        parameter and those tensors themselves do.  Each distinct constraint is
        looked into once (its tensors' hull, what they hold), and all of that work
        counts against :data:`MAX_FITS_WORK`; then each parameter costs its rank."""
        shape = _shape(param)
        key = id(constraint)
        known = self.tensor_shapes.get(key)
        if known is None:
            known = self.tensor_shapes[key] = self.constraint_hull(constraint, where)
        tail, tensors_held, shapes = known
        if not shapes:
            return
        rank = max(len(shape), len(tail))
        hull = [1] * rank
        for each in (shape, tail):
            for axis, extent in enumerate(each, rank - len(each)):
                hull[axis] = max(hull[axis], extent)
        held = _numel(shape) + tensors_held
        if _numel(tuple(hull)) > held:
            listed = ", ".join(dims(each) for each in shapes[:4])
            more = f" and {len(shapes) - 4} more" if len(shapes) > 4 else ""
            self.refuse(
                where,
                f"has tensors of shapes {listed}{more} for a parameter of shape "
                f"{dims(shape)}: broadcast together they make {_numel(tuple(hull))} "
                f"elements from {held} in the file",
            )

    def constraint_hull(
        self, constraint: Any, where: Where
    ) -> tuple[tuple[int, ...], int, list[tuple[int, ...]]]:
        """The hull of the shapes of the distinct tensors within a (checked)
        constraint, their elements, and their shapes."""
        found: list[tuple[int, ...]] = []
        pending, visited = [constraint], set()
        hull: list[int] = []  # right-aligned: hull[-1] is the last axis
        held = 0
        while pending:
            item = pending.pop()
            self.work += 1
            if type(item) in SCALARS or id(item) in visited:
                continue
            visited.add(id(item))
            if type(item) is Tensor:
                shape = _shape(item)
                self.work += len(shape)
                found.append(shape)
                held += _numel(shape)
                if len(shape) > len(hull):
                    hull[:0] = [1] * (len(shape) - len(hull))
                start = len(hull) - len(shape)
                hull[start:] = map(max, hull[start:], shape)
            elif type(item) is Object and item.state:
                pending.extend(item.state.values())
            elif type(item) in (list, tuple):
                pending.extend(item)
            elif type(item) is dict:
                pending.extend(item.values())
            if self.work > MAX_FITS_WORK:
                self.refuse(
                    where,
                    f"is one of constraints whose tensors take more than {MAX_FITS_WORK} "
                    "steps to compare with their parameters (distinct constraints that "
                    "share many tensors)",
                )
        return tuple(hull), held, found


def _shape(tensor: Tensor) -> tuple[int, ...]:
    args = tensor.args[0].args if tensor.parameter else tensor.args
    return tuple(args[2])


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
        where: Where = ("constraints", "[", name)
        if type(constraint) is not Object:
            check.refuse(where, f"is {describe(constraint)}")
        if name not in params:
            check.refuse(where, "constrains a parameter the file does not hold")
    total = check.entries(params, "params", 1) + check.entries(constraints, "constraints", 1)
    if total > MAX_NODES:
        check.refuse("", f"holds more than {MAX_NODES} objects")
    if len(constraints) != len(params):  # every constraint's parameter is in params
        name = next(name for name in params if name not in constraints)
        check.refuse(
            ("params", "[", name),
            "has no constraint (pyro writes one for every parameter, constraints.real "
            "for one declared without)",
        )
    for name, constraint in constraints.items():
        check.fits(constraint, params[name], ("constraints", "[", name))


def check_optim(check: Check, state: Any) -> None:
    """``{param name: optimizer or scheduler state_dict()}``, as
    ``PyroOptim.get_state()`` makes it."""
    if type(state) is not dict:
        check.refuse("", f"is {describe(state)}, not a dict of parameter names")
    for name, value in state.items():
        if type(value) is not dict:
            check.refuse(("state", "[", name), f"is {describe(value)}, not a state_dict()")
    check.entries(state, "state", 0)
    if check.referenced > REFERENCED * check.length:
        check.refuse(
            "",
            f"refers to {check.referenced} bytes of tensors (shared references counted as "
            f"the copies torch's Optimizer.load_state_dict makes of them), more than "
            f"{REFERENCED} times the file's {check.length} bytes",
        )
