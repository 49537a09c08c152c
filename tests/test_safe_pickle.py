"""ddlm.core.safe_pickle.torch_load_inert: torch checkpoints read as torch.load(weights_only=True) reads them, every
other pickled global an inert Placeholder; nothing named by the file is imported or called."""

import collections
import copyreg
import os
import shlex
import sys
import types
import zipfile

import pytest
import torch

from ddlm.core.safe_pickle import Placeholder, torch_load_inert

FOREIGN = "ddlm_test_foreign_objects"  # a module that exists only while the checkpoint is written


class Payload:
    """Pickles as ``os.system(command)``: what a plain unpickler would run."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class Settings(dict):
    """A dict subclass with attributes (pickled as NEWOBJ, SETITEMS, BUILD)."""


class Tokenizer:
    """An object with state and a nested payload."""

    def __init__(self, marker):
        self.vocab = ["a", "b"]
        self.hook = Payload(f"echo pwned > {shlex.quote(str(marker))}")


class Callable:
    def __call__(self):
        return None


class CallsAnObject:
    """Pickles as a call of a (placeholder) instance."""

    def __reduce__(self):
        return Callable(), ()


class StateOnSize:
    """Pickles as torch.Size([2]) followed by BUILD with state: setting attributes on an allowed object."""

    def __reduce__(self):
        return torch.Size, ([2],), {"x": 1}


@pytest.fixture
def foreign(monkeypatch):
    """The test classes moved into the module FOREIGN while saving; afterwards that module is gone, so nothing
    could import it."""
    module = types.ModuleType(FOREIGN)
    for cls in (Payload, Settings, Tokenizer, Callable, CallsAnObject, StateOnSize):
        monkeypatch.setattr(cls, "__module__", FOREIGN)
        setattr(module, cls.__name__, cls)

    def save(obj, path):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, FOREIGN, module)
            torch.save(obj, path)
        assert FOREIGN not in sys.modules
        return path

    return save


def plain_content():
    linear = torch.nn.Linear(3, 2)
    return {"state_dict": linear.state_dict(), "parameter": torch.nn.Parameter(torch.ones(2)),
            "view": torch.arange(12.0).view(3, 4)[:, 1:3], "float64": torch.rand(4, dtype=torch.float64),
            "bfloat16": torch.rand(2, 2).bfloat16(), "ints": torch.arange(5), "size": torch.Size([2, 3]),
            "dtype": torch.float16, "set": {1, 2}, "counter": collections.Counter("aab"), "bytes": b"\x00\x01",
            "complex": 1 + 2j, "nested": [1, (2.5, "x"), {"k": None}], "ordered": collections.OrderedDict(a=1)}


def assert_same(got, want):
    assert type(got) is type(want)
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.stride() == want.stride() and torch.equal(got, want)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert_same(a, b)
    else:
        assert got == want


def test_plain_checkpoints_read_as_weights_only_reads_them(tmp_path):
    path = tmp_path / "plain.pt"
    content = plain_content()
    content["annotated"] = torch.ones(3)
    content["annotated"].note = "kept"  # saved through torch._tensor._rebuild_from_type_v2
    content["shared"] = [content["view"], content["view"][1:]]
    torch.save(content, path)
    got = torch_load_inert(path)
    assert_same(got, torch.load(path, weights_only=True))
    assert got["state_dict"]._metadata == {"": {"version": 1}} and got["annotated"].note == "kept"
    assert got["shared"][1].untyped_storage().data_ptr() == got["view"].untyped_storage().data_ptr()
    assert not any(isinstance(value, Placeholder) for value in got.values())


def test_foreign_objects_become_placeholders_and_payloads_never_run(tmp_path, foreign):
    marker = tmp_path / "pwned"
    settings = Settings(lr=0.1, model={"size": 3})
    settings.note = "kept"
    hyper = {"settings": settings, "tokenizer": Tokenizer(marker), "run": Payload(f"touch {shlex.quote(str(marker))}")}
    path = foreign({"weights": torch.ones(2, 3), "hyper_parameters": hyper}, tmp_path / "ckpt.pt")
    with pytest.raises(ModuleNotFoundError, match=FOREIGN):
        torch.load(path, weights_only=False)  # what plain unpickling needs: the module (and would run os.system)
    assert not marker.exists()
    got = torch_load_inert(path)
    assert not marker.exists() and FOREIGN not in sys.modules
    assert torch.equal(got["weights"], torch.ones(2, 3))
    read = got["hyper_parameters"]
    assert type(read["settings"]).global_name == f"{FOREIGN}.Settings"
    assert read["settings"].entries == [("lr", 0.1), ("model", {"size": 3})] and read["settings"].state == {"note": "kept"}
    tokenizer = read["tokenizer"]
    assert isinstance(tokenizer, Placeholder) and tokenizer.state["vocab"] == ["a", "b"]
    assert type(tokenizer.state["hook"]).global_name == "posix.system" and "echo pwned" in tokenizer.state["hook"].args[0]
    assert read["run"].args == (f"touch {shlex.quote(str(marker))}",) and repr(read["run"]) == "<not loaded: posix.system>"


@pytest.mark.parametrize("content, message", [
    (CallsAnObject(), "refused to call <not loaded: .*Callable>"),
    (StateOnSize(), "refused to set state on Size"),
])
def test_calls_and_state_outside_the_rules_are_refused(tmp_path, foreign, content, message):
    path = foreign({"x": content}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=f"could not read .* as a torch checkpoint: {message}"):
        torch_load_inert(path)


def test_extension_registry_is_refused(tmp_path):
    copyreg.add_extension("collections", "OrderedDict", 240)
    try:
        torch.save({"x": collections.OrderedDict(a=1)}, tmp_path / "ext.pt")
    finally:
        copyreg.remove_extension("collections", "OrderedDict", 240)
    with pytest.raises(ValueError, match="refused extension code 240"):
        torch_load_inert(tmp_path / "ext.pt")


def test_legacy_torchscript_and_foreign_files_are_refused(tmp_path):
    torch.save({"x": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with zipfile.ZipFile(tmp_path / "script.pt", "w") as archive:
        archive.writestr("model/constants.pkl", b"")
        archive.writestr("model/data.pkl", b"")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with zipfile.ZipFile(tmp_path / "empty.pt", "w") as archive:
        archive.writestr("model/other", b"")
    for name, message in [("legacy.pt", "legacy format"), ("script.pt", "TorchScript archive"),
                          ("text.pt", "not a torch zip checkpoint"), ("empty.pt", "could not read .* as a torch checkpoint")]:
        with pytest.raises(ValueError, match=message):
            torch_load_inert(tmp_path / name)
