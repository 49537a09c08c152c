"""Read a torch zip checkpoint whose pickle names arbitrary globals, without importing or calling any of them.

A Lightning ``.ckpt`` pickles its run config (omegaconf), perhaps a tokenizer, beside plain tensors. Plain
``torch.load`` would import and call whatever the pickle names (``os.system`` among them);
``torch.load(weights_only=True)`` refuses the whole file. ``torch_load_inert`` reads it with
``torch.load(weights_only=False, pickle_module=<this module>)``, where torch's unpickler subclasses
``Unpickler`` below: torch keeps its own zip reading (storages by ``persistent_load``, its storage names),
and every global the pickle names passes through ``Unpickler.find_class``, which

* returns the object itself only for the names ``torch.load(weights_only=True)`` allows by default (tensor and
  storage rebuilding functions, dtypes, ``torch.Size``, ``OrderedDict`` and a few builtins; torch's list, read
  from ``torch._weights_only_unpickler``, never the user-extended one), already imported by torch;
* maps every other name to a ``Placeholder`` class made on the spot, whose instances record the arguments
  of the call (REDUCE, NEWOBJ, INST/OBJ), the state (BUILD) and the items (APPEND(S), SETITEM(S), ADDITEMS)
  the pickle applies to them: nothing of that module is imported, nothing it names is called.

The opcodes that call or mutate are re-implemented, as strictly as torch's weights-only unpickler: a call is
made only to an allowed global or a placeholder class; BUILD only sets state on a placeholder or an
``OrderedDict``; items go only into a list, dict, set or a placeholder; the extension registry (EXT1/2/4, a
process-wide cache) is refused. Legacy (non-zip) files, whose header torch reads with ``pickle_module.load``,
and TorchScript archives, which torch hands to ``torch.jit.load``, are refused before torch opens them.
"""

from __future__ import annotations

import _compat_pickle
import os
import pickle
import sys
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch._weights_only_unpickler import _get_allowed_globals

ALLOWED = _get_allowed_globals()  # "module.name" -> object, torch's default weights_only allowlist
_ALLOWED_IDS = {id(value) for value in ALLOWED.values()}
_MAPPINGS = (dict, OrderedDict, Counter)


class Placeholder:
    """A pickled object of a global ddlm does not load: ``global_name`` (class attribute), and what the pickle
    gave it (``args``, ``kwargs``, ``state``, ``items`` appended, ``entries`` [(key, value)] set)."""

    global_name = ""

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.args, self.kwargs, self.state, self.items, self.entries = args, kwargs, None, [], []
        return self

    def __repr__(self) -> str:
        return f"<not loaded: {self.global_name}>"


class Unpickler(pickle._Unpickler):
    """Python's unpickler with globals outside torch's allowlist made ``Placeholder`` classes (never imported)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.placeholders: dict[str, type[Placeholder]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle and torch's weights_only map them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = f"{module}.{name}"
        if key in ALLOWED:
            return ALLOWED[key]
        if key not in self.placeholders:
            self.placeholders[key] = type(f"Placeholder[{key}]", (Placeholder,), {"global_name": key})
        return self.placeholders[key]

    def _call(self, func, args: tuple, kwargs: dict | None = None, new: bool = False):
        """func(*args, **kwargs) (``func.__new__`` if ``new``) for an allowed global or a placeholder class only."""
        placeholder = isinstance(func, type) and issubclass(func, Placeholder)
        if not placeholder and id(func) not in _ALLOWED_IDS:
            raise pickle.UnpicklingError(f"refused to call {func!r}: only torch's weights_only globals are called")
        if new and func is torch.nn.Parameter:
            return torch.nn.Parameter(*args)
        if new and not isinstance(func, type):
            raise pickle.UnpicklingError(f"NEWOBJ on {func!r}, which is not a class")
        return func.__new__(func, *args, **(kwargs or {})) if new else func(*args, **(kwargs or {}))

    def _instantiate(self, klass, args):
        self.append(self._call(klass, tuple(args)))

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, new=True)

    def load_newobj_ex(self):
        kwargs, args = self.stack.pop(), self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, kwargs, new=True)

    def load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, Placeholder):
            target.state = state
        elif type(target) is OrderedDict and isinstance(state, dict):
            target.__dict__.update(state)
        else:
            raise pickle.UnpicklingError(f"refused to set state on {type(target).__name__}")

    def _add(self, items: list, kinds: tuple) -> None:
        """Items [APPEND(S): values; SETITEM(S): key, value, ...; ADDITEMS: values] into the object on the stack."""
        target = self.stack[-1]
        if isinstance(target, Placeholder):
            if kinds is _MAPPINGS:
                target.entries.extend(zip(items[::2], items[1::2]))
            else:
                target.items.extend(items)
        elif type(target) not in kinds:
            raise pickle.UnpicklingError(f"refused to add items to {type(target).__name__}")
        elif kinds is _MAPPINGS:
            target.update(zip(items[::2], items[1::2]))
        else:
            (target.extend if type(target) is list else target.update)(items)

    def load_append(self):
        self._add([self.stack.pop()], (list,))

    def load_appends(self):
        self._add(self.pop_mark(), (list,))

    def load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._add([key, value], _MAPPINGS)

    def load_setitems(self):
        self._add(self.pop_mark(), _MAPPINGS)

    def load_additems(self):
        self._add(self.pop_mark(), (set,))

    def get_extension(self, code):
        raise pickle.UnpicklingError(f"refused extension code {code} (copyreg's process-wide registry)")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems


def torch_load_inert(path: str | os.PathLike) -> Any:
    """What a torch zip checkpoint holds, on the CPU, every non-allowlisted object a ``Placeholder``; a ValueError
    for a legacy, TorchScript or unreadable file."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"refused {path}: not a torch zip checkpoint (the legacy format is not read)")
    with zipfile.ZipFile(path) as archive:
        if any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist()):
            raise ValueError(f"refused {path}: a TorchScript archive (torch would load its code)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=False,
                          pickle_module=sys.modules[__name__])
    except (pickle.UnpicklingError, ValueError, RuntimeError, TypeError, AttributeError, KeyError, IndexError,
            EOFError) as error:
        raise ValueError(f"could not read {path} as a torch checkpoint: {error}".splitlines()[0]) from None

