"""Exceptions raised by :func:`sktl.load` when a saved folder cannot be
trusted or read back as it was written."""

__all__ = ["SaveFormatError", "SaveIntegrityError", "UntrustedTypeError"]


class UntrustedTypeError(TypeError):
    """A saved model names a type that :func:`sktl.load` does not trust.

    By default :func:`sktl.load` builds only types defined by sktl, torch,
    torchvision and sentence-transformers; it never imports a module to find
    out what a name refers to. Pass the classes of a save you trust, imported
    yourself, as ``sktl.load(path, trusted=[MyNet])``.

    Examples
    --------
    >>> from sktl.exceptions import UntrustedTypeError
    >>> issubclass(UntrustedTypeError, TypeError)
    True
    """


class SaveFormatError(ValueError):
    """A folder is not a save this version of sktl can read.

    Raised for a folder without an sktl ``config.json``, another format
    version, an estimator sktl does not define, or a configuration with
    unknown keys or values that are not plain data.

    Examples
    --------
    >>> from sktl.exceptions import SaveFormatError
    >>> issubclass(SaveFormatError, ValueError)
    True
    """


class SaveIntegrityError(ValueError):
    """The files of a save do not match the hashes in its ``config.json``.

    A file was changed, truncated, replaced by one from another save, or is
    missing. The hashes detect accidents (a partial write, a bad copy, bit
    rot, files mixed from two saves), not an attacker who can also edit
    ``config.json``.

    Examples
    --------
    >>> from sktl.exceptions import SaveIntegrityError
    >>> issubclass(SaveIntegrityError, ValueError)
    True
    """
