"""Every private seam of another project that proxyproto-mw relies on, checked against the
installed releases (:data:`proxyproto_mw._upstream.SEAMS`), and no private name in our
modules left out of that list.

An upstream release that renames, removes or changes one of them fails here, with the
seam's name and what we rely on, instead of serving a wrong address at run time.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import proxyproto_mw
from proxyproto_mw._upstream import SEAMS, Seam, require
from proxyproto_mw.errors import ConfigurationError

PACKAGE = Path(proxyproto_mw.__file__).parent

UPSTREAM = ("uvicorn", "uvicorn_worker", "gunicorn", "werkzeug", "websockets")
"""The top-level modules of the projects whose private names must be registered."""


def resolve(dotted: str) -> Any:
    """The object a ``module:qual.name`` (or ``module.qual.name``) names; LookupError if none."""
    module_name, _, qualname = dotted.partition(":")
    parts = qualname.split(".") if qualname else []
    if not qualname:  # dotted form: the longest importable prefix is the module
        names = module_name.split(".")
        for cut in range(len(names), 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(names[:cut]))
            except ImportError:
                continue
            parts = names[cut:]
            break
        else:
            raise LookupError(f"no module in {dotted}")
    else:
        try:
            obj = importlib.import_module(module_name)
        except ImportError as error:
            raise LookupError(f"module {module_name} cannot be imported: {error}") from None
    for part in parts:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(f"{part!r} is gone") from None
    return obj


def source_of(obj: Any) -> str:
    """The source of a class (with its bases' from the same project) or a function."""
    if inspect.isclass(obj):
        top = obj.__module__.split(".")[0]
        sources = []
        for klass in obj.__mro__:
            if klass.__module__.split(".")[0] == top:
                try:
                    sources.append(inspect.getsource(klass))
                except (OSError, TypeError):
                    continue
        return "\n".join(sources)
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def installed(seam: Seam) -> str:
    """The installed release of the seam's project (the test is skipped when it is missing)."""
    try:
        return metadata.version(seam.project)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{seam.project} is not installed")


def broken(seam: Seam, version: str, what: str) -> str:
    """The failure message: the seam, the release, what changed and what we rely on."""
    return (
        f"seam {seam.target} ({seam.project} {version}, used by {seam.used_by}): {what}. "
        f"We rely on: {seam.relied_on}"
    )


@pytest.mark.parametrize("seam", SEAMS, ids=[seam.target for seam in SEAMS])
def test_seam_holds_in_the_installed_release(seam: Seam) -> None:
    """The name resolves, takes the parameters, has the attributes and shows the behaviour."""
    version = installed(seam)
    try:
        target = resolve(seam.target)
    except LookupError as error:
        pytest.fail(broken(seam, version, str(error)))
    if seam.parameters:
        try:
            parameters = inspect.signature(target).parameters
        except (TypeError, ValueError) as error:
            pytest.fail(broken(seam, version, f"no signature: {error}"))
        missing = [name for name in seam.parameters if name not in parameters]
        assert not missing, broken(seam, version, f"no parameter {', '.join(missing)}")
    source = source_of(target)
    for attribute in seam.attributes:
        assigned = re.search(rf"\bself\.{re.escape(attribute)}\s*(?::[^=\n]*)?=[^=]", source)
        assert hasattr(target, attribute) or assigned, broken(
            seam, version, f"no attribute {attribute!r} on the class nor assigned in its source"
        )
    for text in seam.mentions:
        assert text in source, broken(seam, version, f"its source no longer contains {text!r}")


def test_seams_name_our_modules() -> None:
    """Each entry's ``used_by`` is one of our modules, and no target is registered twice."""
    for seam in SEAMS:
        path = PACKAGE.joinpath(*seam.used_by.split(".")[1:]).with_suffix(".py")
        assert seam.used_by.startswith("proxyproto_mw.") and path.is_file(), (
            f"seam {seam.target}: used_by {seam.used_by} is not one of our modules"
        )
    targets = [seam.target for seam in SEAMS]
    assert len(targets) == len(set(targets)), "a target is registered twice"


# --- every private name we use is registered ------------------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class _PrivateNames(ast.NodeVisitor):
    """The private names of upstream projects one module of ours refers to, as
    ``(owner, name)``: ``owner`` the dotted path of the module or class that has ``name``."""

    def __init__(self, tree: ast.Module) -> None:
        self.aliases: dict[str, str] = {}
        """Local name -> the upstream dotted path it was imported as."""
        self.found: set[tuple[str, str]] = set()
        # Names our own code defines: ``self._x`` of those is ours, not upstream's.
        self.ours: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.ours.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                self.ours.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                self.ours.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self.ours.add(node.target.id)
        self.visit(tree)

    @staticmethod
    def _upstream(dotted: str) -> bool:
        return dotted.split(".", maxsplit=1)[0] in UPSTREAM

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if self._upstream(alias.name):
                if alias.asname:
                    self.aliases[alias.asname] = alias.name
                else:
                    self.aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
                self._check_path(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or not self._upstream(module):
            return
        for alias in node.names:
            dotted = f"{module}.{alias.name}"
            self.aliases[alias.asname or alias.name] = dotted
            self._check_path(dotted)

    def _check_path(self, dotted: str) -> None:
        """A dotted path any of whose parts is private."""
        parts = dotted.split(".")
        for index, part in enumerate(parts):
            if _is_private(part):
                self.found.add((".".join(parts[:index]), ".".join(parts[index:])))
                return

    def _dotted(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = self._dotted(node)
        if dotted is not None:
            self._check_path(dotted)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        bases = [base for base in map(self._dotted, node.bases) if base is not None]
        if bases:
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.Attribute)
                    and isinstance(inner.ctx, ast.Load)
                    and _is_private(inner.attr)
                    and inner.attr not in self.ours
                    and (
                        (isinstance(inner.value, ast.Name) and inner.value.id in ("self", "cls"))
                        or (
                            isinstance(inner.value, ast.Call)
                            and isinstance(inner.value.func, ast.Name)
                            and inner.value.func.id == "super"
                        )
                    )
                ):
                    for base in bases:
                        self.found.add((base, inner.attr))
        self.generic_visit(node)


def private_references() -> Iterator[tuple[str, str, str]]:
    """``(our module, owner, private name)`` for every private upstream name we refer to."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        module = ".".join(("proxyproto_mw", *path.relative_to(PACKAGE).with_suffix("").parts))
        for owner, name in sorted(_PrivateNames(tree).found):
            yield module, owner, name


def _same(first: str, second: str) -> bool:
    """Two dotted paths that name the same object (one may be a re-export of the other)."""
    if first == second:
        return True
    try:
        return resolve(first) is resolve(second)
    except LookupError:
        return False


def registered(owner: str, name: str) -> bool:
    """Whether a seam covers ``owner.name``: as its target, or as one of its attributes."""
    for seam in SEAMS:
        target = seam.target.replace(":", ".")
        seam_owner, _, seam_name = target.rpartition(".")
        if seam_name == name.split(".", maxsplit=1)[0] and _same(owner, seam_owner):
            return True
        if name in seam.attributes and _same(owner, target):
            return True
    return False


def test_the_scan_finds_private_names() -> None:
    """The scan sees each kind of private reference (so that an empty result means something)."""
    source = textwrap.dedent(
        """
        from uvicorn._compat import asyncio_run
        from gunicorn.workers.gthread import _DEFER
        from gunicorn.workers import gthread as g
        import werkzeug.serving

        class Worker(g.ThreadWorker):
            def run(self):
                self._mine = 1
                return self._accepting, self._mine, g._DEFER, werkzeug.serving._log
        """
    )
    found = _PrivateNames(ast.parse(source)).found
    assert found == {
        ("uvicorn", "_compat.asyncio_run"),
        ("gunicorn.workers.gthread", "_DEFER"),
        ("gunicorn.workers.gthread.ThreadWorker", "_accepting"),
        ("werkzeug.serving", "_log"),
    }


def test_every_private_name_we_use_is_registered() -> None:
    """No module of ours refers to a private name of uvicorn, gunicorn, uvicorn-worker,
    werkzeug or websockets that is not in ``proxyproto_mw._upstream.SEAMS``."""
    missing = [
        f"{module}: {owner}.{name}"
        for module, owner, name in private_references()
        if not registered(owner, name)
    ]
    assert not missing, (
        "private names of other projects used without a Seam in proxyproto_mw/_upstream.py: "
        + "; ".join(missing)
    )


# --- require(): a clear error where a feature needs a newer release --------------------------


def test_require_passes_for_the_installed_release() -> None:
    version = metadata.version("pytest")
    require("pytest", version, "the test suite")
    require("pytest", version.split(".")[0], "the test suite")
    require("pytest", "1.0", "the test suite")


def test_require_names_the_feature_and_both_releases() -> None:
    version = metadata.version("pytest")
    newer = f"{int(version.split('.')[0]) + 1}.0"
    with pytest.raises(ConfigurationError) as raised:
        require("pytest", newer, "the feature")
    assert str(raised.value) == (
        f"the feature needs pytest >= {newer} (installed: {version}); "
        f"upgrade with pip install 'pytest>={newer}'"
    )


def test_require_compares_releases_as_numbers() -> None:
    """26.10 is newer than 26.9; 27 equals 27.0.0; a pre-release counts as its release."""
    version = metadata.version("pytest")  # e.g. 9.2.0
    major, minor = (int(part) for part in version.split(".")[:2])
    require("pytest", f"{major}.{minor}.0", "x")
    with pytest.raises(ConfigurationError):
        require("pytest", f"{major}.{minor + 10}", "x")
    require("pytest", f"{major}.{minor}rc1", "x")


def test_require_names_a_missing_distribution() -> None:
    with pytest.raises(ConfigurationError, match=r"^x needs proxyproto-no-such-project >= 1 "):
        require("proxyproto-no-such-project", "1", "x")
