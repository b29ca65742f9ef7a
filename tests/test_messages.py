"""Errors a person can act on (issue 28, item 4): a damaged file says it is damaged
and what is missing; a file of another kind says what it looks like and which load
reads it; no message names a class of the loader's own; "could run code" only for
a global that could; ``weights_only=False`` only where torch's load would read the
file.  Every error from reading a crafted archive is the package's, with the
original chained."""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from pathlib import Path

import pyro
import pyro.optim
import pytest
import torch
from guides import DATA, global_model
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from test_loading import _with_central_entry, dumps, floats, store, tensor, torch_reads

import pyro_pickle_fix
from pyro_pickle_fix.errors import DamagedFileError, UntrustedContentError, UntrustedGlobalError

TRUSTED = "weights_only=False"


def _trained(tmp_path: Path) -> tuple[Path, Path, AutoNormal]:
    """A param-store file and an optimizer file, as pyro writes them."""
    guide = AutoNormal(global_model)
    optim = pyro.optim.Adam({"lr": 0.01})
    SVI(global_model, guide, optim, Trace_ELBO()).step(DATA)
    pyro.get_param_store().save(tmp_path / "params.pt")
    optim.save(tmp_path / "optim.pt")
    return tmp_path / "params.pt", tmp_path / "optim.pt", guide


def _load(kind: str, path: Path) -> None:
    if kind == "store":
        pyro.get_param_store().load(path)
    else:
        pyro.optim.Adam({"lr": 0.01}).load(path)


def _refused(kind: str, path: Path, error: type) -> Exception:
    """The load of ``path`` raises ``error`` and changes nothing."""
    pyro.clear_param_store()
    pyro.param("kept", torch.ones(1))
    with pytest.raises(error) as refused:
        _load(kind, path)
    assert list(pyro.get_param_store().keys()) == ["kept"]
    message = str(refused.value)
    assert "Nothing was loaded" in message, message
    assert "Hooks" not in message and "pyro_pickle_fix." not in message, message
    return refused.value


@pytest.mark.parametrize("kind", ["store", "optim"])
@pytest.mark.parametrize("keep", [0, 1, 8, 100, "half", -22, -1])
def test_a_truncated_file_says_it_is_damaged_and_offers_no_other_load(tmp_path, kind, keep):
    stored, optimized, _ = _trained(tmp_path)
    raw = (stored if kind == "store" else optimized).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(raw[: len(raw) // 2 if keep == "half" else keep])
    # Torch cannot read it either, however it is asked: no load would help.
    with pytest.raises((RuntimeError, EOFError, pickle.UnpicklingError, OSError)):
        torch.load(cut, weights_only=False)
    refused = _refused(kind, cut, DamagedFileError)
    message = str(refused)
    assert "the file is damaged" in message and TRUSTED not in message, message
    assert "untrusted" not in message.lower() and "could run code" not in message, message
    if keep == 0:
        assert "is empty (0 bytes)" in message
    elif keep != 1:  # a single byte is not yet a zip's beginning
        assert "central directory" in message and "is missing" in message, message
        assert refused.where == "archive"


def test_a_file_of_another_format_says_it_is_not_one_torch_writes(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("params: 3\n")
    message = str(_refused("store", path, DamagedFileError))
    assert "is not a file torch.save writes (it starts b'params: '" in message, message
    assert TRUSTED not in message


def test_a_guides_state_dict_says_what_it_is_and_which_load_reads_it(tmp_path):
    _, _, guide = _trained(tmp_path)
    path = tmp_path / "guide_state.pt"
    torch.save(guide.state_dict(), path)
    for kind in ("store", "optim"):
        message = str(_refused(kind, path, UntrustedContentError))
        assert "it is a module's state_dict()" in message, message
        assert "guide.load_state_dict(torch.load(path, weights_only=True))" in message
        assert "could run code" not in message and TRUSTED not in message, message
    # What it says reads it does.
    guide.load_state_dict(torch.load(path, weights_only=True))


def test_a_whole_guide_says_what_it_is_and_offers_torchs_full_load_only_for_its_own(tmp_path):
    _, _, guide = _trained(tmp_path)
    path = tmp_path / "guide.pt"
    torch.save(guide, path)
    message = str(_refused("store", path, UntrustedContentError))
    assert "it is a whole AutoNormal object, pickled" in message, message
    assert "use it only on a file you made yourself" in message, message
    assert "pyro.get_param_store().save(path)" in message
    assert type(torch.load(path, weights_only=False)) is AutoNormal  # the load it names


def test_a_param_store_file_given_to_the_optimizer_says_which_load_reads_it(tmp_path):
    stored, optimized, _ = _trained(tmp_path)
    message = str(_refused("optim", stored, UntrustedContentError))
    assert "it is a param-store file" in message and "pyro.get_param_store().load" in message
    assert "could run code" not in message and TRUSTED not in message, message
    # And the other way round.
    message = str(_refused("store", optimized, UntrustedContentError))
    assert "it is an optimizer file" in message and "optim.load(path)" in message, message
    assert TRUSTED not in message
    pyro.clear_param_store()
    pyro.get_param_store().load(stored)  # each loads where the message says
    pyro.optim.Adam({"lr": 0.01}).load(optimized)


def test_a_single_tensor_says_it_is_one(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(2), path)
    message = str(_refused("store", path, UntrustedContentError))
    assert "it is a single tensor" in message and TRUSTED not in message, message


@pytest.mark.parametrize(
    ("kind", "state", "name"),
    [
        ("store", lambda: store({"x": torch.ones(2)}) | {"c": collections.Counter()}, "Counter"),
        ("optim", lambda: {"x": {"state": {}, "shape": torch.Size([2])}}, "torch.Size"),
        ("optim", lambda: {"x": {"state": {}, "seen": {1, 2}}}, ".set"),
    ],
)
def test_data_a_file_should_not_hold_is_not_said_to_run_code(tmp_path, kind, state, name):
    path = tmp_path / "data.pt"
    torch.save(state(), path)
    refused = _refused(kind, path, UntrustedGlobalError)
    assert refused.name.endswith(name)
    assert "it runs no code" in str(refused) and "could run code" not in str(refused)


class Payload:
    """What a crafted file holds to run code: print("ran") when unpickled."""

    def __reduce__(self):
        return (print, ("ran",))


def _optimizer_file_with_a_payload(path: Path) -> Path:
    torch.save({"x": {"state": {}, "hook": Payload()}}, path)
    return path


def test_a_global_that_could_run_code_is_still_said_to(tmp_path):
    path = _optimizer_file_with_a_payload(tmp_path / "payload.pt")
    assert "could run code" in str(_refused("optim", path, UntrustedGlobalError))


def test_no_message_names_a_class_of_the_loaders_own(tmp_path):
    """A tensor's hooks that are not empty: the OrderedDict the file made, by name."""
    data = dumps(store({"x": tensor("0", 2, (2,))}))
    # torch writes a tensor's hooks as OrderedDict(): give them an item.
    at = data.index(b")R", data.index(b"OrderedDict\n")) + 2
    path = tmp_path / "hooks.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data[:at] + b"(K\x01K\x02u" + data[at:])
        archive.writestr("archive/data/0", floats(1.0, 2.0))
    message = str(_refused("store", path, UntrustedContentError))
    assert "sets items on collections.OrderedDict" in message, message


def _crafted(tmp_path: Path, change) -> Path:
    stored, _, _ = _trained(tmp_path)
    raw = stored.read_bytes()
    with zipfile.ZipFile(stored) as archive:
        name = archive.infolist()[0].filename
    path = tmp_path / "crafted.pt"
    path.write_bytes(_with_central_entry(raw, name, change))
    return path


def test_a_zip_version_zipfile_cannot_read_loads_as_torch_reads_it(tmp_path):
    """zipfile raised a bare NotImplementedError ("zip file version 25.5") on main;
    the loader reads the directory itself, and torch's reader ignores the version."""
    path = _crafted(tmp_path, lambda raw, at: struct.pack_into("<H", raw, at + 6, 255))
    pyro.get_param_store().load(path)
    loaded = {name: value.detach() for name, value in pyro.get_param_store().named_parameters()}
    expected = torch_reads(path)["params"]
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


@pytest.mark.parametrize("offset", [2**32 - 16, 2**31])
def test_a_record_offset_outside_the_file_is_the_packages_error(tmp_path, offset):
    path = _crafted(tmp_path, lambda raw, at: struct.pack_into("<I", raw, at + 42, offset))
    refused = _refused("store", path, UntrustedContentError)
    # The record's header is not where it says; the records then do not start at
    # byte 0 either, which is checked first when the shifted record was the first.
    assert any(why in str(refused) for why in ("has no local header", "first record at")), refused


def test_the_damaged_file_error_is_exported():
    assert pyro_pickle_fix.DamagedFileError is DamagedFileError
    assert issubclass(DamagedFileError, pickle.UnpicklingError)
    assert "DamagedFileError" in pyro_pickle_fix.__all__


def test_a_cut_short_file_is_a_damaged_file(tmp_path):
    stored, _, _ = _trained(tmp_path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(stored.read_bytes()[:-1])
    refused = _refused("store", cut, DamagedFileError)
    assert "is cut short" in str(refused), refused


def test_a_refusal_reads_as_a_sentence_and_says_pyro_never_writes_that(tmp_path):
    # It read "...: it is a builtins.dict with keys [...], not a dict with the keys
    # 'params' and 'constraints', which a file that pyro saves never holds."
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 3, "scale": 1.0}, path)
    message = str(_refused("store", path, UntrustedContentError))
    assert (
        "it is a builtins.dict with keys ['step', 'scale'], not a dict with the keys "
        "'params' and 'constraints'. pyro never writes that. Nothing was loaded." in message
    ), message
    assert "never holds" not in message


def test_a_global_that_is_neither_a_tensor_nor_a_container_says_neither_nor(tmp_path):
    path = _optimizer_file_with_a_payload(tmp_path / "payload.pt")
    message = str(_refused("optim", path, UntrustedGlobalError))
    assert "neither a tensor rebuild nor a plain container," in message, message
    torch.save(store({"x": torch.ones(1)}) | {"hook": Payload()}, path)
    with pytest.raises(UntrustedGlobalError) as refused:  # (it names safe_globals())
        pyro.get_param_store().load(path)
    assert "neither a tensor rebuild, a plain container nor one of the constraint" in str(
        refused.value
    )


def test_a_checkpoint_holding_a_stores_state_is_not_called_a_param_store_file(tmp_path):
    # {'step', 'scale', 'store': get_state()} given to optim.load(): the first
    # constraint class its pickle named made it "a param-store file".
    pyro.clear_param_store()
    pyro.param("a", torch.ones(2), constraint=torch.distributions.constraints.positive)
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 3, "scale": 1.0, "store": pyro.get_param_store().get_state()}, path)
    refused = _refused("optim", path, UntrustedGlobalError)
    assert refused.name == "torch.distributions.constraints._GreaterThan", refused
    assert "param-store file" not in str(refused).split("pyro writes constraints")[0], refused
    assert "is a constraint class: an optimizer file of pyro's never holds one" in str(refused)
