"""Which classes :func:`sktl.load` builds from the names a saved folder holds.

A save names classes as strings (``"torch.nn.modules.linear:Linear"``, a
``type`` in a sentence-transformers ``modules.json``). Importing a module to
find out what a string refers to runs that module's code, so a crafted
folder could run anything. As in ``skops.io.load(trusted=...)``, only the
packages of :data:`TRUSTED_PACKAGES` (sktl and the dependencies it builds
backbones with) are looked into; any other class must be imported by the
caller and passed in ``trusted=``, and is matched by its module and
qualified name without importing anything.
"""

from __future__ import annotations

import importlib

from torch import nn

from ..exceptions import SaveFormatError, UntrustedTypeError

__all__ = ["TRUSTED_PACKAGES", "check_trusted", "check_type_name", "resolve_class"]

#: Top-level packages whose classes a save may name without ``trusted=``.
#: The one list: a new backbone family (timm, Hugging Face transformers)
#: adds its package here.
TRUSTED_PACKAGES = ("sktl", "torch", "torchvision", "sentence_transformers")


def check_trusted(trusted):
    """``trusted`` as a tuple of classes; a string is refused, since a name
    is exactly what is not trusted."""
    trusted = tuple(trusted or ())
    for cls in trusted:
        if not isinstance(cls, type):
            raise TypeError(f"trusted= takes classes, imported by you; got {cls!r}.")
    return trusted


def _untrusted(ref, where):
    name = ref.replace(":", ".").rpartition(".")[2]
    return UntrustedTypeError(
        f"{where} names the type {ref!r}, which is not trusted: sktl.load builds "
        f"only types of {', '.join(TRUSTED_PACKAGES)} by default, and never imports "
        "a module to find out what a name is. If you trust this save, import the "
        f"class yourself and pass it: sktl.load(path, trusted=[{name}]).")


def check_type_name(ref, trusted, where):
    """Raise :class:`~sktl.exceptions.UntrustedTypeError` unless the dotted
    name ``ref`` (``"package.module.Class"``, as in ``modules.json``) is in a
    trusted package or names a class of ``trusted``. Imports nothing."""
    if not isinstance(ref, str):
        raise SaveFormatError(f"{where} names a type that is not a string: {ref!r}.")
    if ref.partition(".")[0] in TRUSTED_PACKAGES:
        return
    if any(f"{cls.__module__}.{cls.__qualname__}" == ref for cls in trusted):
        return
    raise _untrusted(ref, where)


def resolve_class(ref, trusted=(), *, where="config.json"):
    """The ``nn.Module`` class named ``"package.module:Qual.Name"``.

    A class of ``trusted`` with that module and qualified name is returned
    as is (nothing is imported); otherwise the module must belong to a
    package of :data:`TRUSTED_PACKAGES`, and only then is it imported.
    """
    module_name, _, qualname = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    parts = module_name.split(".") + qualname.split(".")
    # Identifiers only, no dunders: "pkg:Cls.__init__.__globals__" names no class.
    if not all(p.isidentifier() and not p.startswith("__") for p in parts):
        raise SaveFormatError(f"{where} names {ref!r}, which is not a class path of "
                              "the form 'package.module:Qual.Name'.")
    for cls in trusted:
        if f"{cls.__module__}:{cls.__qualname__}" == ref:
            obj = cls
            break
    else:
        if parts[0] not in TRUSTED_PACKAGES:
            raise _untrusted(ref, where)
        try:
            obj = importlib.import_module(module_name)
        except ImportError as exc:
            raise SaveFormatError(f"{where} names {ref!r}, whose module does not "
                                  f"exist in this environment ({exc}).") from exc
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise TypeError(f"{where} names {ref!r}, which is not a torch.nn.Module class.")
    return obj
