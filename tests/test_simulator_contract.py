"""The client's record shapes against AEMO's operation definitions, through the simulator.

The simulator reads what a body may hold from the definitions it ships (`data/*.yml`), not
from the client's shapes (`records/shapes.py`), so the two are independent witnesses: a
record holding every field of the client's shapes, and one holding every field of the
definitions, are each submitted through the client and must be accepted by the register.
A field the client names wrongly, types wrongly or lacks fails one of the two.
"""

from __future__ import annotations

import ast
import asyncio
import types
import typing
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest
import yaml
from pydantic import SecretStr
from typing_extensions import is_typeddict
from wem_der.records.enumerations import bundled_enumerations
from wem_der.records.shapes import RECORDS, SERVER_FIELDS, RecordKind
from wem_der.run.wiring import Hooks, execute
from wem_der.simulator import Simulator, SimulatorSettings, schema
from wem_der.simulator.testing import SimClient, connected, expect_error, sample_installation

from tests.e2e import make_plan, read_outcomes, run_settings, sim_settings, write_jsonl

NMI = "8001000001"
# Strings whose value has a format; every other string is an enumeration's or free text.
FORMATTED = {"nmi": NMI, "postCode": "6000", "commissioningDate": "2024-03-01"}
# Each kind's write operation in the definitions, and where its record sits in the body.
CREATES = {
    RecordKind.INSTALLATION: (
        "aemo-der-register-installation-v2-openapi.yml",
        "createDERInstallationRecord",
        "data",
    ),
    RecordKind.NMI: ("aemo-der-register-nmi-v1-openapi.yml", "createsANewNMIRecord", None),
}
KINDS = pytest.mark.parametrize("kind", list(RecordKind), ids=str)


def _text(name: str, kind: RecordKind) -> str:
    enums = bundled_enumerations().for_kind(kind)
    if name in FORMATTED:
        return FORMATTED[name]
    return sorted(enums[name])[0] if name in enums else f"{name} text"


def _from_annotation(name: str, annotation: Any, kind: RecordKind) -> Any:
    """A value of the type the client's shape gives field `name`."""
    if get_origin(annotation) in (types.UnionType, typing.Union):
        [annotation] = [a for a in get_args(annotation) if a is not type(None)]
    if is_typeddict(annotation):
        return _from_shape(annotation, kind)
    if get_origin(annotation) is list:
        return [_from_annotation(name, get_args(annotation)[0], kind)]
    if annotation is float:
        return 1.5
    if annotation is int:
        return 1
    assert annotation is str, (name, annotation)
    return _text(name, kind)


def _from_shape(shape: Any, kind: RecordKind) -> dict[str, Any]:
    """A record holding every field of a client shape, and of every shape it nests."""
    hints = get_type_hints(shape)
    return {name: _from_annotation(name, hint, kind) for name, hint in hints.items()}


def _from_placeholder(name: str, example: Any, kind: RecordKind) -> Any:
    """A value of the type the definitions' example gives field `name`; the fields the
    client knows to be the register's are left out, as the client leaves them out."""
    if isinstance(example, dict):
        return {
            key: _from_placeholder(key, value, kind)
            for key, value in example.items()
            if key not in SERVER_FIELDS
        }
    if isinstance(example, list):
        return [_from_placeholder(name, example[0], kind)]
    values = {"number": 1, "string:date": "2024-03-01", "string:date-time": "2024-03-01T08:00:00"}
    return values[example] if example in values else _text(name, kind)


def _definitions_record(kind: RecordKind) -> dict[str, Any]:
    filename, operation_id, inside = CREATES[kind]
    text = resources.files("wem_der.simulator").joinpath(f"data/{filename}").read_text("utf-8")
    paths = yaml.safe_load(text)["paths"]
    [operation] = [
        op
        for item in paths.values()
        for op in item.values()
        if isinstance(op, dict) and op.get("operationId") == operation_id
    ]
    example = operation["requestBody"]["content"]["application/json"]["example"]
    record: dict[str, Any] = _from_placeholder("", example, kind)
    return record[inside] if inside else record


async def _submit_one(tmp_path: Path, kind: RecordKind, record: dict[str, Any]) -> None:
    """Submit `record` through the client to a simulator: it must be accepted and stored."""
    path = write_jsonl(tmp_path / "in.jsonl", [record])
    async with Simulator(sim_settings()) as sim:
        plan = make_plan(tmp_path, [path], kind=kind)
        result = await execute(run_settings(sim, tmp_path), plan, hooks=Hooks())
        stored = sim.store.nmi(NMI) if kind is RecordKind.NMI else sim.store.installation(NMI)
    [line] = [line for lines in read_outcomes(result.out_dir).values() for line in lines]
    assert line["outcome"] == "accepted", (line["reason"], line["errors"])
    assert stored is not None


@KINDS
async def test_every_field_of_the_client_shapes_is_one_the_register_accepts(
    tmp_path: Path, kind: RecordKind
) -> None:
    """A field of records/shapes.py misnamed or mistyped against the definitions passes
    the client's own pre-flight, and is refused here by the register."""
    async with asyncio.timeout(30):
        record = _from_shape(RECORDS[kind], kind)
        assert len(record) > (20 if kind is RecordKind.INSTALLATION else 4)
        await _submit_one(tmp_path, kind, record)


@KINDS
async def test_every_field_of_the_definitions_is_one_the_client_sends(
    tmp_path: Path, kind: RecordKind
) -> None:
    """A field of the definitions that the client's shapes lack, or type otherwise, is
    refused by the client's pre-flight before it is sent."""
    async with asyncio.timeout(30):
        record = _definitions_record(kind)
        assert record["nmi"] == NMI
        await _submit_one(tmp_path, kind, record)


def _modules_imported(path: Path, root: str) -> set[str]:
    """The modules a source file imports (`from root import x` as `root.x`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == root:
            found |= {f"{root}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_simulator_imports_nothing_of_the_client_that_could_share_its_mistakes() -> None:
    """Only the package's file-permission and error helpers, and its test clock: never its
    shapes, validation or enumerations, through which the simulator would agree with the
    client's mistakes."""
    package = schema.__name__.rpartition(".")[0]
    root = package.partition(".")[0]
    allowed = {f"{root}.files.private", f"{root}.errors", f"{root}.testing"}
    outside = {
        (path.name, module)
        for path in Path(schema.__file__).parent.glob("*.py")
        for module in _modules_imported(path, root)
        if module.partition(".")[0] == root
        and not (module == package or module.startswith(f"{package}."))
    }
    assert outside, "the simulator's SQLite store uses the private-file helper"
    assert {module for _, module in outside} <= allowed, sorted(outside)


# -- the simulator's checks, over HTTP ---------------------------------------------------------

SETTINGS = SimulatorSettings(client_secret=SecretStr("s"))


@pytest.fixture
async def client() -> AsyncIterator[SimClient]:
    async with connected(SETTINGS) as c:
        yield c


def _connection(record: dict[str, Any]) -> dict[str, Any]:
    connection: dict[str, Any] = record["acConnections"][0]
    return connection


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (
            lambda r: r.update(approvedCapacity=True),
            "data.approvedCapacity: expected a number, got boolean",
        ),
        (
            lambda r: r.update(jobNumber=7),
            "data.jobNumber: expected a string, got number",
        ),
        (
            lambda r: _connection(r).update(count=1.5),
            "data.acConnections[0].count: expected a whole number, 0 or more, got 1.5",
        ),
        (
            lambda r: _connection(r).update(commissioningDate="2024-02-30"),
            "data.acConnections[0].commissioningDate: expected a real date as yyyy-mm-dd,"
            " got '2024-02-30'",
        ),
        (
            lambda r: r.update(acConnections={}),
            "data.acConnections: expected an array, got object",
        ),
        (
            lambda r: _connection(r)["details"].update(serialNumbers=["S1", 2]),
            "data.acConnections[0].details.serialNumbers[1]: expected a string, got number",
        ),
        (
            lambda r: r.update(nmi=None),
            "data.nmi: expected a string, got null",
        ),
        (
            lambda r: r.update(nmi="6001O00001"),
            "data.nmi: expected a value matching [A-HJ-NP-Z0-9]{10}, got '6001O00001'",
        ),
        (
            lambda r: r.update(islandableInstallation="yes"),
            "data.islandableInstallation: 'yes' is not one of: No, Yes",
        ),
    ],
    ids=[
        "bool-number",
        "number-string",
        "fraction-count",
        "impossible-date",
        "object-array",
        "array-item",
        "null-required",
        "nmi-format",
        "enumeration",
    ],
)
async def test_a_value_of_the_wrong_type_is_one_1020_naming_its_path(
    client: SimClient, change: Any, detail: str
) -> None:
    async with asyncio.timeout(10):
        record = sample_installation()
        change(record)
        answer = await client.create(record)
        assert expect_error(answer, 400, "1020")["detail"] == detail
        assert client.sim.stats()["installations"] == 0


async def test_fields_that_are_not_required_may_be_null(client: SimClient) -> None:
    async with asyncio.timeout(10):
        record = sample_installation(jobNumber=None, exportLimitkW=None)
        _connection(record)["details"] = None
        answer = await client.create(record)
        assert answer.status == 200, answer.body
        stored = client.sim.store.installation("6001000001")
        assert stored is not None
        assert stored.record["jobNumber"] is None


def _bundled_table() -> str:
    return resources.files("wem_der.simulator").joinpath("data/schema.toml").read_text("utf-8")


@pytest.mark.parametrize(
    ("table", "named"),
    [
        (
            '[installation.enumerations]\nexportLimitKW = "yesNo"\n[sets]\nyesNo = ["Y"]',
            "exportLimitKW",
        ),
        ('[installation.enumerations]\njobNumber = "noSuchSet"', "noSuchSet"),
        ('[installation]\nwhole_numbers = ["jobNumber"]', "jobNumber"),
        ('[installation]\nserver_maintained = ["connectionID"]', "connectionID"),
        ('[installation]\nrequired = ["data.nmii"]', "data.nmii"),
        ('[nmi.formats]\npostCode = "[0-9"', "nmi.create: unterminated"),
        ('[nmi]\nrequird = ["nmi"]', "requird"),
    ],
    ids=["unknown-field", "unknown-set", "whole-string", "server", "required", "regex", "key"],
)
def test_a_table_that_does_not_fit_the_definitions_is_refused_at_load(
    table: str, named: str
) -> None:
    """A typo in schema.toml fails when the simulator starts, not by checking nothing."""
    with pytest.raises(ValueError, match=named):
        schema.BodySchema.from_toml(table)


async def test_the_schema_file_setting_replaces_the_bundled_table(tmp_path: Path) -> None:
    """The simulated register's strictness is data: a format added in an amended copy
    of the table applies; the same copy with a typo stops the simulator from starting."""
    bundled = _bundled_table()
    amended = bundled.replace(
        "[installation.formats]\n", '[installation.formats]\njobNumber = "JOB-[0-9]+"\n'
    )
    assert amended != bundled
    path = tmp_path / "schema.toml"
    path.write_text(amended, encoding="utf-8")
    settings = SETTINGS.model_copy(update={"schema_file": path})
    async with asyncio.timeout(10), connected(settings) as c:
        refused = await c.create(sample_installation(jobNumber="J1"))
        assert expect_error(refused, 400, "1020")["detail"].startswith("data.jobNumber:")
        assert (await c.create(sample_installation(jobNumber="JOB-1"))).status == 200

    path.write_text(amended.replace('jobNumber = "JOB', 'jobNumbr = "JOB'), encoding="utf-8")
    with pytest.raises(ValueError, match="jobNumbr"):
        async with Simulator(settings):
            pass
