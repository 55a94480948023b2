"""The drawing at the top of lilypad/errors.py is the hierarchy the code defines."""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import lilypad.errors
from lilypad.errors import LilypadError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lilypad", "resource_provider", "solver")
ERRORS = "lilypad.errors"
LINE = re.compile(
    r"(?P<indent>(?:[│ ]   )*)[├└]── (?P<name>\w+)"
    r"(?: \((?P<mixins>\w+(?:, \w+)*)\))?(?:\s+\[(?P<module>[\w.]+)\])?"
)


@dataclass(frozen=True)
class Drawn:
    name: str
    parent: str
    mixins: tuple[str, ...]
    module: str


def drawing() -> dict[str, Drawn]:
    """The classes the module docstring draws, by ``module.name``."""
    doc = lilypad.errors.__doc__ or ""
    lines = doc.splitlines()
    top = lines.index("    LilypadError")
    drawn: dict[str, Drawn] = {}
    parents = ["LilypadError"]
    for line in lines[top + 1 :]:
        found = LINE.match(line.removeprefix("    "))
        if found is None:
            break
        depth = len(found["indent"]) // 4
        del parents[depth + 1 :]
        name, module = found["name"], found["module"] or ERRORS
        assert f"{module}.{name}" not in drawn, f"{name} is drawn twice"
        mixins = tuple(found["mixins"].split(", ")) if found["mixins"] else ()
        drawn[f"{module}.{name}"] = Drawn(name, parents[depth], mixins, module)
        parents.append(name)
    return drawn


def shape(cls: type) -> tuple[str, tuple[str, ...]]:
    """A class's parent in the hierarchy and its builtin mix-ins."""
    ours = [b.__name__ for b in cls.__bases__ if issubclass(b, LilypadError)]
    assert len(ours) == 1, f"{cls.__name__} derives from {ours}"
    return ours[0], tuple(b.__name__ for b in cls.__bases__ if not issubclass(b, LilypadError))


def defined_in_sources() -> set[str]:
    """Every public class of the packages that derives (by name) from an error: ``module.name``."""
    classes: list[tuple[str, list[str], str]] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(
                ".__init__"
            )
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
                    classes.append((node.name, bases, module))
    known = {"LilypadError"}
    found: set[str] = set()
    seen: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, bases, module in classes:
            where = f"{module}.{name}"
            if where not in seen and known & set(bases):
                seen.add(where)
                known.add(name)
                grew = True
                if not name.startswith("_"):
                    found.add(where)
    return found


def test_every_class_of_errors_py_is_drawn_in_its_place() -> None:
    drawn = drawing()
    here = {
        name: cls
        for name, cls in vars(lilypad.errors).items()
        if isinstance(cls, type)
        and issubclass(cls, LilypadError)
        and cls is not LilypadError
        and cls.__module__ == ERRORS
    }
    missing = sorted(name for name in here if f"{ERRORS}.{name}" not in drawn)
    assert not missing, f"not drawn (or drawn as defined elsewhere): {missing}"
    for name, cls in here.items():
        entry = drawn[f"{ERRORS}.{name}"]
        assert shape(cls) == (entry.parent, entry.mixins), name


@pytest.mark.parametrize("where", sorted(k for k, d in drawing().items() if d.module != ERRORS))
def test_a_class_drawn_elsewhere_is_there_in_its_place(where: str) -> None:
    entry = drawing()[where]
    cls = getattr(importlib.import_module(entry.module), entry.name)
    assert cls.__module__ == entry.module
    assert shape(cls) == (entry.parent, entry.mixins)


def test_every_public_error_of_the_packages_is_drawn() -> None:
    drawn, sources = set(drawing()), defined_in_sources()
    assert not sources - drawn, (
        f"add to the drawing in lilypad/errors.py: {sorted(sources - drawn)}"
    )
    assert not drawn - sources, f"drawn but defined nowhere: {sorted(drawn - sources)}"
