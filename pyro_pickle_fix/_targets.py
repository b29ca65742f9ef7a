"""What pyro-pickle-fix patches: one entry per method that corrupts the live object
it serializes (or loads what it should not), with the pyro-ppl releases that need it.

Loaded when pyro is imported (or the API is used); standard library only.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

Version = tuple[int, ...]  # e.g. (1, 9, 1)

#: The pyro-ppl releases this table was checked against, oldest and newest.
KNOWN_PYRO: tuple[Version, Version] = ((1, 8, 6), (1, 9, 2))


class Bug:
    """One way stock pyro-ppl corrupts the live object or a file, and where it happens."""

    __slots__ = ("pyro_max", "pyro_min", "python_min", "summary", "torch_max", "torch_min")

    def __init__(
        self,
        summary: str,
        *,
        pyro_max: Version | None = None,
        pyro_min: Version | None = None,
        python_min: Version | None = None,
        torch_min: Version | None = None,
        torch_max: Version | None = None,
    ) -> None:
        self.summary = summary
        #: First and last pyro-ppl release with the bug; None: every known release.
        self.pyro_min = pyro_min
        self.pyro_max = pyro_max
        #: First Python with the bug; None: every Python has it.
        self.python_min = python_min
        #: First and last torch (major, minor) with the bug; None: every torch.
        self.torch_min = torch_min
        self.torch_max = torch_max

    def present(self, pyro: Version, python: Version, torch: Version | None = None) -> bool | None:
        """Whether this bug is in that pyro-ppl on that Python and torch; None if
        pyro is unknown (or torch is, where the bug depends on it)."""
        if self.python_min is not None and python < self.python_min:
            return False
        if self.pyro_max is not None and pyro > self.pyro_max:
            return False
        if self.pyro_min is not None and pyro[:3] < self.pyro_min:
            return False
        if self.torch_min is not None or self.torch_max is not None:
            if torch is None:
                return None
            if self.torch_min is not None and torch[:2] < self.torch_min:
                return False
            if self.torch_max is not None and torch[:2] > self.torch_max:
                return False
        if not KNOWN_PYRO[0] <= pyro[:3] <= KNOWN_PYRO[1]:
            return None
        return True


class Patch:
    """One wrapped method.

    ``target`` is ``"module:Owner.attribute"`` (or ``"module:function"``); it is
    wrapped once ``trigger`` (default: the target's module) has been imported.
    ``kind`` names the wrapper in :mod:`pyro_pickle_fix._wrappers`, or is
    ``"dask_pickle"``: a registration in Dask's serializer registry
    (:mod:`pyro_pickle_fix.integrations.dask`) instead of a wrapper.
    """

    __slots__ = (
        "added",
        "alive",
        "bugs",
        "hide",
        "kind",
        "leaf_tensors",
        "partner",
        "requires",
        "snapshot",
        "target",
        "trigger",
    )

    def __init__(
        self,
        target: str,
        bugs: tuple[Bug, ...],
        *,
        kind: str = "copy_on_serialize",
        trigger: str | None = None,
        hide: Mapping[str, str] | None = None,
        snapshot: tuple[str, ...] = (),
        alive: tuple[str, ...] = (),
        leaf_tensors: bool = False,
        added: bool = False,
        requires: tuple[str, ...] = (),
        partner: str | None = None,
    ) -> None:
        self.target = target
        self.bugs = bugs
        self.kind = kind
        self.trigger = trigger or self.module
        #: Registries emptied on the private copy while the original runs (its loop
        #: over them would change live objects), each mapped to the state key that
        #: then gets the live registry back (or a copy, where the original copied it).
        self.hide = dict(hide or {})
        #: Containers that training changes in place: the state gets a copy taken
        #: in one step, so a save running beside a training thread never iterates
        #: one while it changes.  Everything else in the state is the live object,
        #: as stock pyro writes it.
        self.snapshot = snapshot
        #: Weakref attributes that the original turns into strong references:
        #: a dead one is an error at save time, not at load time.
        self.alive = alive
        #: Non-leaf tensors in the state become leaves with the same data and
        #: requires_grad (what pickle writes for them, and what deepcopy can copy):
        #: one leaf per tensor per save, so a tensor the stream shares stays shared.
        self.leaf_tensors = leaf_tensors
        #: The class does not define the method: it gets one (calling the inherited
        #: method through the wrapper) while patched, and loses it on unpatch().
        #: (A class that defines it keeps its own, wrapped, and gets it back.)
        self.added = added
        #: Targets this repair is unsafe without: it is applied only once they are
        #: in place (and checked), and is left stock, with a note, when one is not.
        self.requires = requires
        #: The target whose repair this entry is part of, when it fixes no stock
        #: bug of its own (it is needed wherever that one is).
        self.partner = partner

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.target.partition(":")[2].split("."))

    @property
    def engine(self) -> bool:
        """Whether the target belongs to an engine (Dask), not to pyro or torch."""
        return self.module.split(".")[0] not in ("pyro", "torch")

    @property
    def dotted(self) -> str:
        return self.target.replace(":", ".")

    def needed(self, pyro: Version, python: Version, torch: Version | None = None) -> bool | None:
        """Whether that pyro-ppl on that Python and torch has a bug this patch fixes
        (None: unknown); a partner entry is needed wherever its partner is."""
        if self.partner is not None:
            return BY_TARGET[self.partner].needed(pyro, python, torch)
        answers = [bug.present(pyro, python, torch) for bug in self.bugs]
        if True in answers:
            return True
        return None if None in answers else False

    def __repr__(self) -> str:
        return f"Patch({self.target!r})"


PY311 = (3, 11)  # object.__getstate__ exists from 3.11 on and returns the live __dict__
WEIGHTS_ONLY_DEFAULT = (2, 6)  # torch.load's weights_only defaults to True from here on
#: Where torch reads a tensor's Python state to pickle it: the other half of every
#: repair that keeps pyro's weakref on the live parameters.
TENSOR_STATE = "torch._utils:_get_obj_state"

PATCHES: tuple[Patch, ...] = (
    Patch(
        "pyro.contrib.easyguide.easyguide:Group.__getstate__",
        (
            # state is the live __dict__ on 3.11+; swapping the weakref for the guide
            # in it makes group.guide call the EasyGuide instead of dereferencing it.
            Bug(
                "replaces the Group's weakref to its EasyGuide with a strong "
                "reference in the live __dict__; the next SVI step fails",
                pyro_max=(1, 9, 1),
                python_min=PY311,
            ),
            # Pickles "fine" and then fails at load time, far from the cause.
            Bug(
                "a Group whose EasyGuide is gone pickles, and the bytes fail to load "
                "with 'cannot create weak reference to NoneType'"
            ),
        ),
        alive=("_guide",),
    ),
    Patch(
        "pyro.nn.module:PyroModule.__getstate__",
        (
            # torch pickles a tensor's __dict__, and pyro keeps a weakref in it; the
            # tensor-state hook below leaves it out of what is written instead.
            Bug(
                "pops the 'unconstrained' weakref from every live Parameter: held "
                "handles fail on .unconstrained() and a training thread races the save"
            ),
            # Every call of an EasyGuide fills its plate cache and clears it at the end;
            # pickle iterates the live dict.
            Bug(
                "an EasyGuide saved while a training step ends fails with 'dictionary "
                "changed size during iteration' (its per-call plate cache)"
            ),
        ),
        hide={"_parameters": "_parameters", "_modules": "_modules"},
        # An EasyGuide (no __getstate__ of its own: this is its outermost one) clears
        # and refills its plate cache on every call.  An AutoGuide's plates are not
        # snapshotted: an AutoGuideList's children share their master's dict, and
        # the stream must say so, as stock's does.  (Nor is a cache that anything
        # else holds: the stream must share it too.)
        snapshot=("plates",),
        # Hiding the registries leaves the weakref on the live parameters, so the
        # tensor-state hook must leave it out of what is written.
        requires=(TENSOR_STATE,),
    ),
    Patch(
        "pyro.nn.module:PyroModule.__copy__",
        # copy.copy reaches __getstate__ through __reduce_ex__, as a save does, and
        # stock's copy shares the plate cache: this marks the object being copied
        # (no frame inspection), so the wrapper above takes no snapshot for it.
        (),
        kind="mark_copy",
        added=True,
        partner="pyro.nn.module:PyroModule.__getstate__",
    ),
    Patch(
        "pyro.infer.autoguide.guides:AutoGuide.__getstate__",
        (
            Bug(
                "sets _model and master to None on the live guide: .model, "
                "laplace_approximation(), append() and nested guides then fail"
            ),
        ),
    ),
    Patch(
        "pyro.infer.autoguide.guides:AutoGuide.__setstate__",
        (
            # copy.copy shares the child guides; re-mastering them to the copy leaves
            # the original's children pointing at a guide that may die.
            Bug(
                "copy.copy re-masters the original's child guides to the copy; once "
                "the copy is freed the original fails"
            ),
        ),
        kind="adopt_children",
    ),
    Patch(
        "pyro.contrib.easyguide.easyguide:EasyGuide.__setstate__",
        (
            # EasyGuide has no __setstate__ of its own (torch.nn.Module's runs); it
            # gets one only while patched, so no other module pays for the repair.
            Bug(
                "copy.copy of an EasyGuide shares its Groups, still bound to the "
                "original guide: the copy runs through the original's groups"
            ),
        ),
        kind="adopt_groups",
        added=True,
    ),
    Patch(
        "pyro.params.param_store:ParamStoreDict.get_state",
        (
            Bug(
                "pops the 'unconstrained' weakref from every live parameter in the "
                "store (pyro.get_param_store().save())"
            ),
        ),
        hide={"_params": "params"},
        requires=(TENSOR_STATE,),
    ),
    Patch(
        "pyro.params.param_store:ParamStoreDict.load",
        (
            Bug(
                "fails on every file with a constrained parameter: torch >= 2.6 loads "
                "weights-only, and pyro's constraint classes are not allowed",
                pyro_max=(1, 9, 1),
                torch_min=WEIGHTS_ONLY_DEFAULT,
            ),
            Bug(
                "loads with weights_only=False: a param-store file runs whatever code it holds",
                pyro_min=(1, 9, 2),
            ),
            Bug(
                "loads with torch.load's default, weights_only=False before torch 2.6: "
                "a param-store file runs whatever code it holds",
                pyro_max=(1, 9, 1),
                torch_max=(2, 5),
            ),
        ),
        kind="safe_load",
    ),
    Patch(
        "pyro.optim.optim:PyroOptim.load",
        (
            # 1.9.2 passes weights_only=False, for torch 2.6's new default.
            Bug(
                "loads with weights_only=False: an optimizer file runs whatever code it holds",
                pyro_min=(1, 9, 2),
            ),
            # Earlier releases take torch.load's default, weights-only from torch 2.6.
            Bug(
                "loads with torch.load's default, weights_only=False before torch 2.6: "
                "an optimizer file runs whatever code it holds",
                pyro_max=(1, 9, 1),
                torch_max=(2, 5),
            ),
            # Even weights-only: torch rebuilds it as a view that repeats the file's data.
            Bug(
                "loads a tensor that repeats the file's data (stride 0): a few KB in "
                "the file become a tensor of any size"
            ),
        ),
        kind="safe_load",
    ),
    Patch(
        "pyro.poutine.guide:GuideMessenger.__getstate__",
        (
            Bug(
                "drops the live trace of a GuideMessenger (state is the live __dict__ on 3.11+)",
                pyro_max=(1, 8, 6),
                python_min=PY311,
            ),
        ),
    ),
    Patch(
        "torch.distributions.transforms:Transform.__getstate__",
        (
            # pyro replaces this method in pyro/distributions/torch_patch.py; its state
            # is the live __dict__ on 3.11+.
            Bug(
                "pyro's patched Transform.__getstate__ sets weakref attributes to "
                "None in the live __dict__",
                python_min=PY311,
            ),
            # A trained AutoIAFNormal caches non-leaf tensors in its transforms.
            Bug(
                "copy.deepcopy of a trained transform module (AutoIAFNormal) raises "
                "'Only Tensors created explicitly by the user (graph leaves) support "
                "the deepcopy protocol'"
            ),
        ),
        trigger="pyro.distributions.torch_patch",
        leaf_tensors=True,
    ),
    Patch(
        TENSOR_STATE,
        (
            # The other half of the PyroModule and param-store fixes.  torch reads a
            # tensor's Python state here when it pickles a Tensor or a Parameter, and
            # pyro keeps a weakref in it: the state torch writes leaves it out, as if
            # pyro had popped it from the live tensor, and torch then takes the very
            # path it takes after stock's pop.  Tensors without it are untouched.
            Bug(
                "a pyro.param() value or a Parameter carrying pyro's 'unconstrained' "
                "weakref cannot be pickled or torch.saved ('cannot pickle "
                "'weakref.ReferenceType' object') unless pyro first pops it from the "
                "live tensor"
            ),
        ),
        kind="drop_weakref",
        trigger="pyro.params.param_store",
    ),
    Patch(
        "torch._tensor:Tensor.__copy__",
        # copy.copy of a tensor reaches the hook above through __reduce_ex__; stock's
        # copy keeps pyro's weakref, so the hook must know which tensor is copied.
        (),
        kind="mark_copy",
        added=True,
        trigger="pyro.params.param_store",
        partner=TENSOR_STATE,
    ),
    Patch(
        "distributed.protocol.serialize:dask_serialize",
        (
            # distributed.protocol.torch registers a generic serializer for every
            # torch.nn.Module that walks __dict__ past __getstate__; registering
            # PyroModule as "use pickle" routes guides through the wrappers above.
            Bug(
                "Dask serializes a guide by walking its __dict__, past __getstate__: "
                "errors are logged for pyro's weakrefs, and an AutoGuideList fails "
                "with 'Could not serialize object of type ReferenceType'"
            ),
        ),
        kind="dask_pickle",
    ),
)


#: target -> its entry
BY_TARGET: dict[str, Patch] = {entry.target: entry for entry in PATCHES}


def parse_version(text: str) -> Version:
    """``"1.9.1"``, ``"1.9.1+abc"`` or ``"1.10.0.dev3"`` -> its leading release numbers."""
    numbers = []
    for part in text.replace("+", ".").split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
        if digits != part:
            break
    if not numbers:
        raise ValueError(f"not a version: {text!r}")
    return tuple(numbers)
