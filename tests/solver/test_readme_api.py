"""README.md's "The solver API" says what the solver serves: its route table is the routes of
``/openapi.json`` and its events are every :class:`EventKind`, no more and no fewer."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from lilypad.solver_api import EventKind
from tests.solver.conftest import Server

README = Path(__file__).parents[2] / "README.md"
ROUTE = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE) ([^`?\s]+)(?:\?[^`]*)?` \|", re.MULTILINE)
KIND = re.compile(r"`((?:job_offer|resource_offer|deal)\.[a-z_]+)`")


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("#### The solver API")
    end = text.index("\n### ", start)
    return text[start:end]


def readme_routes() -> set[tuple[str, str]]:
    """``(METHOD, path)`` of each row, ``{job,resource}`` spelt out, parameters as ``{}``."""
    routes = set()
    for method, path in ROUTE.findall(section()):
        for side in ("job", "resource") if "{job,resource}" in path else ("",):
            spelt = path.replace("{job,resource}", side)
            routes.add((method, re.sub(r"\{\w+\}", "{}", spelt)))
    return routes


def test_the_readmes_route_table_is_the_openapi_of_the_solver(
    served: tuple[Server, httpx.Client],
) -> None:
    _, client = served
    paths = client.get("/openapi.json").json()["paths"]
    served_routes = {
        (method.upper(), re.sub(r"\{\w+\}", "{}", path))
        for path, operations in paths.items()
        for method in operations
    }
    documented = readme_routes()
    assert documented, "no route table found in README.md's solver API section"
    assert documented - served_routes == set(), "README.md lists routes the solver does not serve"
    assert served_routes - documented == set(), "the solver serves routes README.md does not list"


def test_the_readme_names_every_event_kind_and_no_other() -> None:
    named = set(KIND.findall(section()))
    assert named - set(EventKind) == set(), "README.md names event kinds the solver never sends"
    assert set(EventKind) - named == set(), "README.md leaves out event kinds the solver sends"
