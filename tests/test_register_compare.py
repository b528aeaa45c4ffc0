"""register/compare.py: when a record and the register's version of it are the same."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from wem_der.records.shapes import RecordKind
from wem_der.records.validation import validate_record
from wem_der.register.compare import Difference, carry_ids, differences, submitted
from wem_der.simulator.records import stamp_installation
from wem_der.simulator.testing import sample_installation

NOW = "2025-01-01T10:00:00+08:00"


def two_connections() -> dict[str, Any]:
    """A record with connections C1 (device D1) and C2 (devices D2, D3)."""
    record = sample_installation()
    second = copy.deepcopy(record["acConnections"][0])
    second["nspConnectionId"] = "C2"
    second["devices"][0]["nspDeviceId"] = "D2"
    third_device = copy.deepcopy(second["devices"][0])
    third_device["nspDeviceId"] = "D3"
    third_device["count"] = 2
    second["devices"].append(third_device)
    record["acConnections"].append(second)
    return record


def stored(record: dict[str, Any]) -> dict[str, Any]:
    """`record` as the register holds it: ids, stages and dates added."""
    ids = itertools.count(101)
    return stamp_installation(copy.deepcopy(record), None, [], lambda kind: next(ids), NOW).record


def test_the_registers_own_fields_are_not_differences() -> None:
    """Ids, stages and record dates at every level are the register's, not the client's."""
    record = two_connections()
    held = stored(record)
    assert held["acConnections"][1]["devices"][1]["deviceId"] > 100  # stamped, then ignored
    assert differences(record, held) == []


def test_numbers_compare_by_value_and_nothing_else_does() -> None:
    """5 equals 5.0; a boolean, a string of digits or another number does not."""
    record = sample_installation(approvedCapacity=10)
    assert differences(record, stored(sample_installation(approvedCapacity=10.0))) == []
    for value in ("10", True, 10.5):
        held = stored(record)
        held["approvedCapacity"] = value
        assert differences(record, held) == [Difference("approvedCapacity", 10, value)]


@pytest.mark.parametrize(
    ("source", "register"),
    [
        ({}, {"loadCapacity": None}),
        ({"loadCapacity": None}, {}),
        ({"comments": None}, {"comments": None}),
        ({}, {"acConnections": []}),
        ({"acConnections": None}, {"acConnections": []}),
    ],
    ids=["absent-null", "null-absent", "null-null", "absent-empty-array", "null-empty-array"],
)
def test_absent_equals_null(source: dict[str, Any], register: dict[str, Any]) -> None:
    """An absent field, null and an empty array all say "nothing here"."""
    assert differences({"nmi": "8001000001", **source}, {"nmi": "8001000001", **register}) == []


def test_a_null_object_equals_one_of_nulls() -> None:
    """A connection's details given as null, or left out, equal details holding only nulls."""
    record = sample_installation()
    record["acConnections"][0]["details"] = None
    held = stored(sample_installation())
    held["acConnections"][0]["details"] = {"manufacturerName": None, "recordUpdateDate": NOW}
    assert differences(record, held) == []
    held["acConnections"][0]["details"]["modelNumber"] = "M"
    assert differences(record, held) == [
        Difference("acConnections[0].details.modelNumber", None, "M")
    ]


def test_a_field_the_source_leaves_out_that_the_register_holds_differs() -> None:
    """An update sends the whole record: a field the register holds but the source has not
    would be cleared, so it is a difference."""
    held = stored(sample_installation(comments="old note"))
    assert differences(sample_installation(), held) == [Difference("comments", None, "old note")]


def test_fields_outside_the_shapes_count_only_from_the_source() -> None:
    """What the register adds beyond the shapes is ignored; what the source adds counts."""
    held = stored(sample_installation())
    held["exceptions"] = [{"code": "2023"}]
    held["acConnections"][0]["recordStartDate"] = NOW
    assert differences(sample_installation(), held) == []
    assert differences(sample_installation(newField=1), held) == [Difference("newField", 1, None)]


def test_connections_and_devices_are_matched_by_their_ids_in_any_order() -> None:
    """Reordering connections or devices is no change; a changed field is named at the
    source's position of its connection and device."""
    record = two_connections()
    held = stored(record)
    held["acConnections"].reverse()
    held["acConnections"][0]["devices"].reverse()
    assert differences(record, held) == []
    held["acConnections"][0]["devices"][0]["count"] = 5  # D3, the source's devices[1]
    assert differences(record, held) == [Difference("acConnections[1].devices[1].count", 2, 5)]


def test_without_ids_items_are_matched_by_position() -> None:
    """A connection without an nspConnectionId is compared with the register's at its
    position, whatever id that one has; two different ids are two connections."""
    record = sample_installation()
    record["acConnections"][0]["nspConnectionId"] = None
    held = stored(sample_installation())
    assert differences(record, held) == [Difference("acConnections[0].nspConnectionId", None, "C1")]
    renamed = sample_installation()
    renamed["acConnections"][0]["nspConnectionId"] = "C9"
    [gone, extra] = differences(renamed, held)
    assert (gone.path, gone.source, gone.register) == (
        "acConnections[0]",
        renamed["acConnections"][0],
        None,
    )
    assert (extra.path, extra.source) == ("acConnections[0]", None)
    assert extra.register == sample_installation()["acConnections"][0]  # as a client sends it


def test_connections_only_one_side_has_are_named_by_their_own_position() -> None:
    """A connection the register lacks is named at its source position; one only the
    register holds, at its position there, shown as a client would submit it."""
    both = two_connections()
    only_c2 = copy.deepcopy(both)
    del only_c2["acConnections"][0]
    [lacking] = differences(both, stored(only_c2))
    assert (lacking.path, lacking.source, lacking.register) == (
        "acConnections[0]",
        both["acConnections"][0],
        None,
    )
    held = stored(both)
    held["acConnections"].reverse()  # C2, C1
    [extra] = differences(only_c2, held)
    assert (extra.path, extra.source, extra.register) == (
        "acConnections[1]",
        None,
        both["acConnections"][0],
    )


def test_other_arrays_compare_in_order() -> None:
    """Serial numbers are a list of values: their order is part of the record."""
    record = sample_installation()
    record["acConnections"][0]["details"]["serialNumbers"] = ["A", "B"]
    held = stored(record)
    held["acConnections"][0]["details"]["serialNumbers"] = ["B", "A"]
    assert differences(record, held) == [
        Difference("acConnections[0].details.serialNumbers", ["A", "B"], ["B", "A"])
    ]


def test_carried_ids_follow_the_matching() -> None:
    """An update carries the register's connectionId and deviceId of the connections and
    devices it matches, and none for those the register lacks; the source is untouched."""
    record = two_connections()
    record["acConnections"].append(copy.deepcopy(record["acConnections"][0]))
    record["acConnections"][2]["nspConnectionId"] = "C3"
    held = stored(two_connections())
    held["acConnections"].reverse()
    before = copy.deepcopy(record)
    carried = carry_ids(record, held)
    assert record == before
    by_nsp = {c["nspConnectionId"]: c for c in held["acConnections"]}
    first, second, new = carried["acConnections"]
    assert first["connectionId"] == by_nsp["C1"]["connectionId"]
    assert [d["deviceId"] for d in second["devices"]] == [
        d["deviceId"] for d in by_nsp["C2"]["devices"]
    ]
    assert "connectionId" not in new
    assert "deviceId" not in new["devices"][0]
    # The carried ids are no difference; the connection the register lacks is.
    assert [d.path for d in differences(carried, held)] == ["acConnections[2]"]


def test_submitted_keeps_what_a_client_sends() -> None:
    """The register's version, reduced to the shapes, is a valid record to submit again."""
    held = stored(two_connections())
    held["exceptions"] = [{"code": "2023"}]
    again = submitted(held)
    assert again == two_connections()
    assert validate_record(again, RecordKind.INSTALLATION) == again
