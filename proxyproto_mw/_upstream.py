"""Every private attribute or behaviour of another project that proxyproto-mw relies on.

The adapters use public seams where the servers have them (asyncio's Protocol and
Transport, uvicorn's ``--http`` class, gunicorn's worker classes, websockets'
``create_connection=``). What is left is listed here, once, and
``tests/test_contracts.py`` checks each entry against the installed versions, so that an
upstream release that changes one fails the suite naming the seam instead of serving
a wrong address.

An adapter that starts relying on something private adds a :class:`Seam` here in the same
change.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SEAMS", "Seam"]


@dataclass(frozen=True)
class Seam:
    """One private name (or behaviour) of another project that an adapter relies on."""

    project: str
    """The distribution that provides it, as pip names it (``uvicorn``, ``gunicorn``)."""
    target: str
    """``module:qualified.name``; the contract test imports it and resolves the name."""
    relied_on: str
    """What the adapter relies on, in one sentence."""
    used_by: str
    """The module of ours that relies on it."""
    parameters: tuple[str, ...] = ()
    """For a callable: parameter names it must accept."""
    attributes: tuple[str, ...] = ()
    """For a class: attributes its instances or the class must have (checked on the class
    or in its ``__init__``'s source when set per instance)."""


SEAMS: tuple[Seam, ...] = ()
