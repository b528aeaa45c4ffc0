"""Planning from the register: what its current version of an NMI means for a record.

    held: None     --> send; the first request is a create
    held: the same --> `skipped`, saying when it was read and by which transaction
    held: other    --> send; the first request is an update, carrying the register's ids

The comparison is register/compare.py's. The record is made ready in place, as the engine
fills in `exists` (records/outcomes.py, `PreparedRecord`): it alone holds the record then.
"""

from __future__ import annotations

from wem_der.records.outcomes import OutcomeRecord, PreparedRecord
from wem_der.register.compare import carry_ids, differences
from wem_der.register.search import Held


def decide(
    rec: PreparedRecord, held: Held | None, *, carry_register_ids: bool = True
) -> OutcomeRecord | None:
    """The `skipped` outcome of `rec` if `held`, the register's current version of its
    NMI (None: it holds none), is the same; else None, with `rec` ready to send.

    Ready to send: `rec.exists` says whether the register holds the NMI, so that an
    upsert's first request is the right one, and with `carry_register_ids` an update's
    payload carries the `connectionId` and `deviceId` of the connections and devices it
    matches (a guess about AEMO, see compare.py). Its content hash stays the source's.
    """
    if held is None:
        rec.exists = False
        return None
    if not differences(rec.payload, held.record, rec.kind):
        read = held.read_at.isoformat(timespec="seconds")
        return rec.skipped(
            f"the register holds it unchanged (read at {read}), so it is not sent",
            transaction_id=held.transaction_id,
        )
    rec.exists = True
    if carry_register_ids:
        rec.payload = carry_ids(rec.payload, held.record)
    return None
