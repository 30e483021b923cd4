"""The package's own API, no router needed: Status, __version__, LoadReport, stubs."""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib.metadata
import json
import pickle
import re
import typing
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import ringrouter
from ringrouter import load
from conftest import PYTHON_CLIENT, REPO

PACKAGE = Path(ringrouter.__file__).parent


def proto_statuses() -> List[Tuple[str, int]]:
    """``enum Status`` of proto/router.proto: (name without STATUS_, value), in order."""
    text = (REPO / "proto" / "router.proto").read_text()
    body = re.search(r"^enum Status \{(.*?)^\}", text, re.S | re.M)
    assert body, "no enum Status in proto/router.proto"
    pairs = re.findall(r"^\s*STATUS_(\w+)\s*=\s*(\d+)\s*;", body.group(1), re.M)
    assert pairs, "enum Status has no STATUS_ values"
    return [(name, int(value)) for name, value in pairs]


def stub_class(name: str) -> ast.ClassDef:
    tree = ast.parse((PACKAGE / "_native.pyi").read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"no class {name} in _native.pyi")


# ---------------------------------------------------------------------- Status


def test_status_is_the_protos_enum() -> None:
    assert [(m.name, m.value) for m in ringrouter.Status] == proto_statuses()


def test_status_stub_lists_the_runtime_members() -> None:
    members: List[Tuple[str, int]] = []
    for node in stub_class("Status").body:
        if isinstance(node, ast.Assign):
            (target,) = node.targets
            assert isinstance(target, ast.Name) and isinstance(node.value, ast.Constant)
            members.append((target.id, node.value.value))
    assert members == [(m.name, m.value) for m in ringrouter.Status]


def test_status_is_an_int_enum() -> None:
    S = ringrouter.Status
    assert issubclass(S, enum.IntEnum)
    assert S is ringrouter._native.Status
    assert "Status" in ringrouter.__all__
    assert (S.__module__, S.__qualname__) == ("ringrouter", "Status")
    assert S.NOT_FOUND == 6 and S(6) is S.NOT_FOUND and S["NOT_FOUND"] is S.NOT_FOUND
    assert S.OK == 1 and S.UNSPECIFIED == 0
    assert pickle.loads(pickle.dumps(S.CONFLICT)) is S.CONFLICT
    assert S.__doc__ and "IntEnum" in S.__doc__


def test_router_error_class_defaults() -> None:
    # Raised from Python code (no router involved), the attributes still exist.
    e = ringrouter.RouterError("made up")
    assert (e.code, e.status, e.reason) == ("", None, "")
    for cls in (ringrouter.AuthError, ringrouter.ConnectionClosed):
        e = cls("made up")
        assert (e.code, e.status, e.reason) == ("", None, "")


def test_router_error_stub_declares_status() -> None:
    annotated = {
        n.target.id: ast.unparse(n.annotation)
        for n in stub_class("RouterError").body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    assert annotated == {"code": "str", "status": "Optional[Status]", "reason": "str"}


# --------------------------------------------------------------------- version


def workspace_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        m = re.search(
            r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.S | re.M
        )
        assert m, "no version in [workspace.package] of Cargo.toml"
        return m.group(1)
    return str(tomllib.loads(text)["workspace"]["package"]["version"])


def test_version_is_the_workspace_version() -> None:
    v = workspace_version()
    assert ringrouter.__version__ == v
    assert ringrouter.__version__ is ringrouter._native.__version__
    # The wheel's version too (maturin takes it from pybind/Cargo.toml, which
    # inherits the workspace's). A pre-release Cargo version ("1.0.0-rc.1") would
    # appear PEP 440-normalised here ("1.0.0rc1"); this repository has none.
    assert importlib.metadata.version("ringrouter") == v


def test_version_has_one_source() -> None:
    pyproject = (PYTHON_CLIENT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic\s*=\s*\["version"\]', pyproject, re.M), pyproject
    assert not re.search(r"^version\s*=", pyproject, re.M), "a second version in pyproject.toml"
    pybind = (REPO / "pybind" / "Cargo.toml").read_text()
    assert re.search(r"^version\.workspace\s*=\s*true", pybind, re.M), pybind
    for py in PACKAGE.rglob("*.py"):
        assert not re.search(r"^__version__\s*=", py.read_text(), re.M), py


# ------------------------------------------------------------------ LoadReport


def report_fields(**changes: object) -> Dict[str, object]:
    fields: Dict[str, object] = {
        "sent": 10, "delivered": 10, "lost": 0, "out_of_order": 0, "seconds": 0.5,
        "msgs_per_sec": 20.0, "mb_per_sec": 0.001, "p50_us": 1.0, "p90_us": 2.0,
        "p99_us": 3.0, "p999_us": 4.0, "max_us": 5.0, "receivers": 1,
        "receiver_min_msgs_per_sec": 20.0, "receiver_avg_msgs_per_sec": 20.0,
        "receiver_max_msgs_per_sec": 20.0, "engine_cpu_seconds": 0.1, "client_cpu_s": 0.1,
        "timeline": [[0.1, 4], [0.2, 10]], "latency_buckets": [[1.0, 5], [5.0, 5]],
        "server_cpu_s": 0.2,
    }
    fields.update(changes)
    return fields


def test_load_report_is_a_frozen_dataclass() -> None:
    R = load.LoadReport
    assert dataclasses.is_dataclass(R)
    r = R.from_dict(report_fields())
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.lost = 1  # type: ignore[misc]
    names = [f.name for f in dataclasses.fields(R)]
    assert names == [*R.field_names(), "extra"]
    # Every field has a type hint.
    hints = typing.get_type_hints(R)
    assert set(hints) == set(names)
    assert hints["sent"] is int and hints["seconds"] is float
    assert hints["timeline"] == List[Tuple[float, int]]
    # The field docstrings are in the source (attribute docstrings after each field).
    source = (PACKAGE / "load" / "__init__.py").read_text()
    for name in R.field_names():
        assert re.search(rf'^    {name}: .*\n    """', source, re.M), f"{name} has no docstring"


def test_load_report_round_trips_json() -> None:
    text = json.dumps(report_fields())
    r = load.LoadReport.from_json(text)
    assert r.timeline == [(0.1, 4), (0.2, 10)]
    assert r.latency_buckets == [(1.0, 5), (5.0, 5)]
    assert r.extra == {}
    assert json.loads(r.to_json()) == json.loads(text)
    assert list(json.loads(r.to_json())) == list(load.LoadReport.field_names())
    assert load.LoadReport.from_json(r.to_json()) == r
    assert hash(r) == hash(load.LoadReport.from_json(r.to_json()))
    assert r != load.LoadReport.from_dict(report_fields(lost=1))
    assert dataclasses.replace(r, lost=1).lost == 1
    assert "lost=0" in repr(r) and "out_of_order=0" in repr(r)


def test_load_report_keeps_fields_it_does_not_name() -> None:
    r = load.LoadReport.from_dict(report_fields(new_engine_field=7))
    assert r.extra == {"new_engine_field": 7}
    assert r.new_engine_field == 7  # type: ignore[attr-defined]
    assert json.loads(r.to_json())["new_engine_field"] == 7
    with pytest.raises(AttributeError):
        r.no_such_field  # type: ignore[attr-defined]  # noqa: B018


def test_load_report_needs_every_field() -> None:
    fields = report_fields()
    del fields["out_of_order"]
    with pytest.raises(ValueError, match="out_of_order"):
        load.LoadReport.from_dict(fields)
    with pytest.raises(ValueError):
        load.LoadReport.from_json("[1, 2]")
    # server_cpu_s came later: a report from an engine without it still reads.
    fields = report_fields()
    del fields["server_cpu_s"]
    assert load.LoadReport.from_dict(fields).server_cpu_s is None


# ----------------------------------------------------------------------- typing


def test_stubs_cover_the_native_module() -> None:
    """Every public name of the native module is in its stubs, and the reverse."""
    tree = ast.parse((PACKAGE / "_native.pyi").read_text())
    declared = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared.add(node.target.id)
    runtime = {n for n in dir(ringrouter._native) if not n.startswith("_")} | {"__version__"}
    assert declared == runtime


def test_public_api_is_documented() -> None:
    for name in ringrouter.__all__:
        obj = getattr(ringrouter, name)
        assert (obj.__doc__ or "").strip(), f"ringrouter.{name} has no docstring"
    for name in load.__all__:
        obj = getattr(load, name)
        if callable(obj) and not hasattr(obj, "__origin__"):
            assert (obj.__doc__ or "").strip(), f"ringrouter.load.{name} has no docstring"
    public = [n for n in dir(ringrouter.Client) if not n.startswith("_")]
    for name in public:
        assert (getattr(ringrouter.Client, name).__doc__ or "").strip(), f"Client.{name}"
    readme = (PYTHON_CLIENT / "README.md").read_text()
    for name in ("Status", "LoadReport", "__version__", "status"):
        assert name in readme, f"README.md does not mention {name}"
