"""Local validation of records: types, paths in errors, did-you-mean, enumerations as data."""

import random
from typing import Any

import orjson
import pytest
from wem_der.records.enumerations import Enumerations, bundled_enumerations
from wem_der.records.samples import installation, nmi_record
from wem_der.records.shapes import RecordKind
from wem_der.records.validation import FieldIssue, validate_record


def sample() -> dict[str, Any]:
    return installation(7, random.Random(7))


def issues(record: object, **kwargs: Any) -> dict[str, str]:
    result = validate_record(record, RecordKind.INSTALLATION, **kwargs)
    assert isinstance(result, list), "expected the record to be refused"
    return {issue.path: issue.message for issue in result}


def test_a_realistic_record_is_valid_and_round_trips_exactly() -> None:
    """A valid record is returned as it is, and orjson out and back in loses nothing."""
    record = sample()
    assert validate_record(record, RecordKind.INSTALLATION) is record
    decoded = orjson.loads(orjson.dumps(record))
    assert decoded == record
    assert validate_record(decoded, RecordKind.INSTALLATION) is decoded


def test_the_error_names_the_json_path_of_a_nested_field() -> None:
    """A wrong type deep in the record is reported at its JSON path, with what was expected."""
    record = sample()
    record["acConnections"][0]["devices"][0]["details"]["nominalRatedCapacity"] = "5"
    found = issues(record)
    assert found == {
        "acConnections[0].devices[0].details.nominalRatedCapacity": "expected a number, got string"
    }


def test_a_mistyped_field_gets_a_suggestion() -> None:
    """`exportLimitKW` is refused and pointed at AEMO's `exportLimitkW`."""
    record = sample()
    record["exportLimitKW"] = record.pop("exportLimitkW")
    assert issues(record) == {"exportLimitKW": "unknown field; did you mean 'exportLimitkW'?"}


def test_a_near_miss_deep_down_gets_a_suggestion_from_its_own_level() -> None:
    """Suggestions come from the fields of the object the typo is in."""
    record = sample()
    record["acConnections"][0]["details"]["manufacturerNam"] = "SMA"
    found = issues(record)
    suggestion = "unknown field; did you mean 'manufacturerName'?"
    assert found == {"acConnections[0].details.manufacturerNam": suggestion}


def test_an_unrelated_unknown_field_gets_no_suggestion() -> None:
    """No did-you-mean when nothing is close."""
    record = sample()
    record["zzz"] = 1
    assert issues(record) == {"zzz": "unknown field"}


def test_unknown_fields_pass_when_allowed() -> None:
    """The setting lets unknown fields through to the register."""
    record = sample()
    record["brandNewAemoField"] = "x"
    assert validate_record(record, RecordKind.INSTALLATION, allow_unknown=True) is record


def test_server_maintained_fields_are_refused_even_when_unknown_fields_are_allowed() -> None:
    """The register assigns connectionId and installationStage; a client never sends them."""
    record = sample()
    record["acConnections"][0]["connectionId"] = 12
    record["acConnections"][0]["devices"][0]["installationStage"] = "Confirmed"
    expected = {
        "acConnections[0].connectionId": "is maintained by the register and cannot be submitted",
        "acConnections[0].devices[0].installationStage": (
            "is maintained by the register and cannot be submitted"
        ),
    }
    assert issues(record) == expected
    assert issues(record, allow_unknown=True) == expected


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("approvedCapacity",), True, "expected a number, got boolean"),
        (("approvedCapacity",), float("inf"), "expected a finite number"),
        (("approvedCapacity",), "6.6", "expected a number, got string"),
        (("jobNumber",), 12, "expected a string, got number"),
        (("availablePhasesCount",), -1, "expected 0 or more, got -1"),
        (("availablePhasesCount",), 1.5, "expected a whole number, got 1.5"),
        (
            ("availablePhasesCount",),
            1.0,
            "expected a whole number without a decimal point, got 1.0",
        ),
        (("acConnections", 0, "count"), 3.0, "expected a whole number without a decimal point"),
        (("nmi",), 1.0, "expected a string, got 1.0"),
        (("jobNumber",), 2.0, "expected a string, got 2.0"),
        (("acConnections", 0, "details", "serialNumbers"), 1.0, "expected an array, got 1.0"),
        (("islandableInstallation",), "yes", "'yes' is not one of: No, Yes"),
        (("nmi",), "80010", "expected an NMI matching ^[A-HJ-NP-Z0-9]{10}$"),
        (("acConnections", 0, "equipmentType"), "Solar", "'Solar' is not one of"),
        (("acConnections", 0, "commissioningDate"), "2024-02-30", "expected a real date"),
        (("acConnections", 0, "commissioningDate"), "30/01/2024", "expected a date as yyyy-mm-dd"),
        (("acConnections", 0, "devices", 0, "type"), "solar pv", "'solar pv' is not one of"),
        (("acConnections", 0, "details", "serialNumbers"), "SN1", "expected an array, got string"),
        (("acConnections",), {"a": 1}, "expected an array, got object"),
        (("acConnections", 0, "details"), "SMA", "expected an object, got string"),
        (("acConnections", 0, "devices", 0), 5, "expected an object, got number"),
        (("availablePhasesCount",), "2", "expected a whole number, got string"),
    ],
)
def test_each_kind_of_invalid_field(path: tuple[Any, ...], value: Any, message: str) -> None:
    """Each wrong value is refused at its path with a message that says what was expected."""
    record = sample()
    target: Any = record
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    found = issues(record)
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    assert where in found, found
    assert found[where].startswith(message)


def test_a_missing_nmi_and_a_non_object_are_refused() -> None:
    """The NMI is the key; a record must be an object."""
    record = sample()
    del record["nmi"]
    assert issues(record) == {"nmi": "required field is missing"}
    assert issues([record]) == {"(record)": "expected a JSON object, got array"}


def test_every_problem_of_a_record_is_reported_at_once() -> None:
    """A typo and a wrong type in one record both come back."""
    record = sample()
    record["exportLimitKW"] = record.pop("exportLimitkW")
    record["approvedCapacity"] = "6.6"
    assert set(issues(record)) == {"exportLimitKW", "approvedCapacity"}


def test_enumerations_are_data_that_can_be_amended() -> None:
    """A table with another value makes it valid without a code change."""
    record = sample()
    record["acConnections"][0]["equipmentType"] = "Fuel Cell"
    assert "acConnections[0].equipmentType" in issues(record)
    text = bundled_enumerations_text().replace(
        '"Solar PV Inverter",', '"Solar PV Inverter", "Fuel Cell",'
    )
    amended = Enumerations.from_toml(text)
    assert validate_record(record, RecordKind.INSTALLATION, enumerations=amended) is record
    assert "acConnections[0].equipmentType" in issues(record)  # the bundled table is unchanged


def test_formats_are_data_too_and_each_table_keeps_its_own() -> None:
    """An amended NMI pattern applies to the records checked with that table only."""
    record = sample()
    amended = Enumerations.from_toml(
        bundled_enumerations_text().replace("[A-HJ-NP-Z0-9]{10}", "9[0-9]{9}")
    )
    assert issues(record, enumerations=amended) == {"nmi": "expected an NMI matching ^9[0-9]{9}$"}
    assert validate_record(record, RecordKind.INSTALLATION) is record
    record["nmi"] = "9001000007"
    assert validate_record(record, RecordKind.INSTALLATION, enumerations=amended) is record


def bundled_enumerations_text() -> str:
    from importlib import resources

    text = resources.files("wem_der").joinpath("data/enumerations.toml").read_text("utf-8")
    assert bundled_enumerations().sets["equipmentType"]  # the file is the bundled table
    return text


def test_nmi_records_have_their_own_rules() -> None:
    """The NMI body: post code format and its own status set."""
    good = nmi_record(3)
    assert validate_record(good, RecordKind.NMI) is good
    bad = {**good, "postCode": "600", "status": "Decommissioned"}
    result = validate_record(bad, RecordKind.NMI)
    assert isinstance(result, list)
    assert {i.path for i in result} == {"postCode", "status"}
    assert all(isinstance(i, FieldIssue) for i in result)
