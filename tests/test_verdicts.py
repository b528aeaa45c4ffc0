"""`decide`: what one answer to a write means for its record, status and context together."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from wem_der.records.outcomes import Action
from wem_der.send.retry import Answered, Meaning, decide

# An answer with nothing special about it: a create of an explicit `--action create` run,
# not a replay, no known refusal, no 403 before it.
PLAIN = Answered(
    status=200,
    action=Action.CREATE,
    upsert=False,
    json_object=True,
    replayed=False,
    already_exists=False,
    record_missing=False,
    forbidden_streak=0,
    stop_after_forbidden=3,
)


def answered(status: int, **context: Any) -> Answered:
    return replace(PLAIN, status=status, **context)


@pytest.mark.parametrize("status", [200, 201, 204])
def test_a_2xx_of_the_registers_json_is_accepted(status: int) -> None:
    """A 2xx whose body is a JSON object: stored."""
    assert decide(answered(status)) is Meaning.ACCEPTED


@pytest.mark.parametrize("status", [200, 201])
def test_a_2xx_without_a_json_object_is_not_the_register(status: int) -> None:
    """A 2xx of HTML, text or nothing stops the run rather than counting as accepted."""
    assert decide(answered(status, json_object=False)) is Meaning.NOT_THE_REGISTER


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_transient_failures_retry(status: int) -> None:
    """408 and the transient 5xx are waited out, 503 included (a throttle or not)."""
    assert decide(answered(status)) is Meaning.RETRY


def test_only_a_429_is_throttled() -> None:
    """A 429 says the quota was overrun: every worker pauses, not this record alone."""
    assert decide(answered(429)) is Meaning.THROTTLED


def test_a_first_401_refreshes_the_token() -> None:
    """A 401: refresh the token and replay."""
    assert decide(answered(401)) is Meaning.REFRESH_TOKEN


def test_a_401_on_the_replay_fails_the_record() -> None:
    """A 401 again with a token refreshed for it: no second refresh, the record fails."""
    assert decide(answered(401, replayed=True)) is Meaning.REFRESH_FAILED


@pytest.mark.parametrize("status", [405, 411, 415, 301, 302, 100])
def test_statuses_no_sound_client_gets_stop_the_run(status: int) -> None:
    """Wrong method, missing Content-Length, wrong media type, a redirect: misconfigured."""
    assert decide(answered(status)) is Meaning.MISCONFIGURED


@pytest.mark.parametrize("upsert", [False, True])
@pytest.mark.parametrize("missing", [False, True])
def test_a_404_on_a_create_is_a_wrong_url(upsert: bool, missing: bool) -> None:
    """A create names no record that could be missing: its 404 is a path nobody serves,
    however it is worded."""
    found = decide(answered(404, action=Action.CREATE, upsert=upsert, record_missing=missing))
    assert found is Meaning.WRONG_URL


@pytest.mark.parametrize("upsert", [False, True])
def test_a_404_on_an_update_not_worded_as_a_missing_record_is_a_wrong_url(upsert: bool) -> None:
    """An update's 404 that is not the register's "ID not found" came from a wrong path."""
    assert decide(answered(404, action=Action.UPDATE, upsert=upsert)) is Meaning.WRONG_URL


def test_an_updates_404_for_a_missing_record_is_rejected() -> None:
    """`--action update` of an NMI the register has no record of: rejected, not a stop."""
    found = decide(answered(404, action=Action.UPDATE, record_missing=True))
    assert found is Meaning.NO_RECORD


def test_an_upserts_404_for_a_missing_record_switches_to_create() -> None:
    """An upsert that guessed update for an NMI with no record creates it instead."""
    found = decide(answered(404, action=Action.UPDATE, upsert=True, record_missing=True))
    assert found is Meaning.CREATE_INSTEAD


@pytest.mark.parametrize("status", [400, 409, 422])
def test_a_create_refused_as_already_there_is_rejected(status: int) -> None:
    """`--action create` of an NMI that has a record: rejected."""
    assert decide(answered(status, already_exists=True)) is Meaning.ALREADY_EXISTS


@pytest.mark.parametrize("status", [400, 409, 422])
def test_an_upserts_create_refused_as_already_there_switches_to_update(status: int) -> None:
    """An upsert that guessed create for an NMI with a record updates it instead."""
    found = decide(answered(status, upsert=True, already_exists=True))
    assert found is Meaning.UPDATE_INSTEAD


def test_already_exists_means_nothing_to_an_update() -> None:
    """An update's refusal worded like "already exists" is a plain rejection."""
    found = decide(answered(422, action=Action.UPDATE, upsert=True, already_exists=True))
    assert found is Meaning.REJECTED


@pytest.mark.parametrize("status", [400, 409, 413, 422, 501, 505])
def test_other_refusals_are_rejected(status: int) -> None:
    """Schema and business-rule refusals, a body over the limit, an unknown 5xx: final."""
    assert decide(answered(status)) is Meaning.REJECTED


@pytest.mark.parametrize("streak", [0, 1])
def test_a_403_below_the_limit_rejects_the_record(streak: int) -> None:
    """A 403 is the record's rejection while fewer than the limit came in a row."""
    found = decide(answered(403, forbidden_streak=streak, stop_after_forbidden=3))
    assert found is Meaning.FORBIDDEN


@pytest.mark.parametrize(("streak", "limit"), [(2, 3), (0, 1), (9, 3)])
def test_the_403_that_reaches_the_limit_stops_the_run(streak: int, limit: int) -> None:
    """The limit-th 403 in a row means the client is not entitled: the run stops."""
    found = decide(answered(403, forbidden_streak=streak, stop_after_forbidden=limit))
    assert found is Meaning.FORBIDDEN_EVERYWHERE


def test_a_403_is_forbidden_whatever_the_action() -> None:
    """An upsert's update gets the same 403 treatment as a create."""
    found = decide(answered(403, action=Action.UPDATE, upsert=True, forbidden_streak=1))
    assert found is Meaning.FORBIDDEN


@pytest.mark.parametrize("status", [0, 99, 600])
def test_a_number_that_is_no_http_status_is_refused(status: int) -> None:
    """A number outside 100-599 is a bug upstream, not a meaning."""
    with pytest.raises(ValueError, match="not an HTTP status"):
        decide(answered(status))
