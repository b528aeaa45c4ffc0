"""The shapes of the records a client submits to AEMO's WEM DER Register; no I/O.

Field names are the JSON names of AEMO's operation definitions, odd casings included
(`exportLimitkW` beside `importLimitKw`), because a valid record is sent exactly as decoded.
The shapes are TypedDicts rather than models because validation needs only pydantic's
verdict on the decoded dict, which is what gets sent: checking a TypedDict builds no
instance per nested object, and building those was most of the cost of checking a record.
Server-maintained fields (`SERVER_FIELDS`) are not part of a submission: the register
assigns them. Which strings are enumerations, and their values, is data (records/enumerations.py).
Checking a decoded value against a shape, and saying why it is not one, is records/validation.py's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, ValidationInfo, with_config

# Before Python 3.12 pydantic accepts only typing_extensions' TypedDict, not typing's.
from typing_extensions import TypedDict

# Fields the register maintains and returns; a client that sends them is confused about
# which side owns them (docs/aemo-contract.md, "Server-maintained fields").
SERVER_FIELDS = frozenset(
    {
        "recordCreationDate",
        "recordUpdateDate",
        "recordConfirmedDate",
        "connectionId",
        "deviceId",
        "installationStage",
    }
)


class RecordKind(StrEnum):
    """Which API a record belongs to."""

    INSTALLATION = "installation"
    NMI = "nmi"


# What records/validation.py passes as the context of every check: the `formats` of the run's
# enumerations table, so that a format is data like the enumerations are.
Formats = Mapping[str, re.Pattern[str]]


def _format(field: str, what: str) -> Callable[[str, ValidationInfo[Formats]], str]:
    """A check of `field` against its pattern in the table, when the table has one."""

    def check(value: str, info: ValidationInfo[Formats]) -> str:
        pattern = info.context.get(field)
        if pattern is not None and not pattern.fullmatch(value):
            raise ValueError(f"expected {what} matching {pattern.pattern}")
        return value

    return check


def _iso_date(value: str) -> str:
    # AEMO documents yyyy-mm-dd; keep the string as given so a round trip is exact.
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("expected a date as yyyy-mm-dd")
    try:
        date.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"expected a real date as yyyy-mm-dd ({exc})") from None
    return value


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages an operator reads ("null", not
    "NoneType")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


# Strict float: an int is a number, a string or a bool is not, NaN and Infinity are
# refused; checked in pydantic's core, not a Python call per field. The shape is only a
# check: what is sent is the record as decoded, so an int is never made a float.
Number = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
IsoDate = Annotated[str, AfterValidator(_iso_date)]
Nmi = Annotated[str, AfterValidator(_format("nmi", "an NMI"))]
PostCode = Annotated[str, AfterValidator(_format("postCode", "a post code"))]

# strict: "5" is not a number and 1 is not a string; a client that sends the wrong type
# would only learn it from a 400 that costs a request. Unknown fields are ignored here
# because records/validation.py reports them (with a did-you-mean) from the decoded record, which
# is also what gets sent. Every shape names it rather than count on a parent's reaching it.
_STRICT = ConfigDict(strict=True, extra="ignore")


@with_config(_STRICT)
class DeviceDetails(TypedDict, total=False):
    manufacturerName: str | None
    modelNumber: str | None
    nominalRatedCapacity: Number | None
    nominalLoadCapacity: Number | None
    nominalStorageCapacity: Number | None


@with_config(_STRICT)
class Device(TypedDict, total=False):
    nspDeviceId: str | None
    type: str | None
    comments: str | None
    count: Count | None
    status: str | None
    details: DeviceDetails | None


@with_config(_STRICT)
class AcConnectionDetails(TypedDict, total=False):
    serialNumbers: list[str] | None
    manufacturerName: str | None
    modelNumber: str | None
    equipmentSeries: str | None
    equipmentStandard: str | None
    regionSetting: str | None
    additionalRequirements: str | None
    sustainOpOvervoltLimit: Number | None
    stopAtOverFreq: Number | None
    stopAtUnderFreq: Number | None
    dredInverterInteraction: str | None
    invVoltWattRespMode: str | None
    invWattRespV1: Number | None
    invWattRespV2: Number | None
    invWattRespV3: Number | None
    invWattRespV4: Number | None
    invWattRespPAtV1: Number | None
    invWattRespPAtV2: Number | None
    invWattRespPAtV3: Number | None
    invWattRespPAtV4: Number | None
    invVoltVarRespMode: str | None
    invVarRespV1: Number | None
    invVarRespV2: Number | None
    invVarRespV3: Number | None
    invVarRespV4: Number | None
    invVarRespQAtV1: Number | None
    invVarRespQAtV2: Number | None
    invVarRespQAtV3: Number | None
    invVarRespQAtV4: Number | None
    invReactivePowerMode: str | None
    invFixReactivePower: Number | None
    fixPowerFactorMode: str | None
    fixPowerFactor: Number | None
    fixPowerFactorQuad: str | None
    powerRespMode: str | None
    referencePointP1: Number | None
    referencePointP2: Number | None
    powerFactorAtP1: Number | None
    powerFactorQuadAtP1: str | None
    powerFactorAtP2: Number | None
    powerFactorQuadAtP2: str | None
    powerRateLimitMode: str | None
    powerRampRate: Number | None
    reactivePowerRegulation: str | None
    voltageSetPoint: Number | None
    voltageSetPointUnit: str | None
    deadband: Number | None
    droop: Number | None
    baseForDroop: Number | None
    reactivePowerSourceLimit: Number | None
    reactivePowerSinkLimit: Number | None
    reactiveFixPowerFactor: Number | None
    reactiveFixPowerFactorQuad: str | None
    generatorRampRate: str | None
    powerRampGradient: Number | None
    frequencySensitiveMode: str | None
    frequencyDeadband: Number | None
    frequencyDroop: Number | None


@with_config(_STRICT)
class AcConnection(TypedDict, total=False):
    nspConnectionId: str | None
    commissioningDate: IsoDate | None
    equipmentType: str | None
    count: Count | None
    status: str | None
    equipmentInjectionCapacity: Number | None
    equipmentWithdrawalCapacity: Number | None
    evseOwnershipStatus: str | None
    authorisedAgent: str | None
    managementMethod: str | None
    frequencyRateOfChange: Number | None
    voltageVectorShift: Number | None
    interTripScheme: str | None
    neutralVoltageDisplacement: Number | None
    details: AcConnectionDetails | None
    devices: list[Device] | None


@with_config(_STRICT)
class KeyedRecord(TypedDict):
    """What both record kinds share: the NMI that keys them, the one required field."""

    nmi: Nmi


@with_config(_STRICT)
class Installation(KeyedRecord, total=False):
    """The `data` object of an Installation v2 create or update."""

    jobNumber: str | None
    approvedCapacity: Number | None
    loadCapacity: Number | None
    exportLimitkW: Number | None
    importLimitKw: Number | None
    availablePhasesCount: Count | None
    installedPhasesCount: Count | None
    islandableInstallation: str | None
    centralProtectionControl: str | None
    underFrequencyProtection: Number | None
    underFrequencyProtectionDelay: Number | None
    overFrequencyProtection: Number | None
    overFrequencyProtectionDelay: Number | None
    underVoltageProtection: Number | None
    underVoltageProtectionDelay: Number | None
    overVoltageProtection: Number | None
    overVoltageProtectionDelay: Number | None
    sustainedOverVoltage: Number | None
    sustainedOverVoltageDelay: Number | None
    frequencyRateOfChange: Number | None
    voltageVectorShift: Number | None
    interTripScheme: str | None
    neutralVoltageDisplacement: Number | None
    otherProtection: str | None
    installerId: str | None
    comments: str | None
    acConnections: list[AcConnection] | None


@with_config(_STRICT)
class NmiRecord(KeyedRecord, total=False):
    """The body of an NMI v1 create or update (not wrapped in `data`)."""

    substation: str | None
    postCode: PostCode | None
    tni: str | None
    status: str | None


# The shape of each kind's record: records/validation.py checks types against it and walks it for
# unknown fields and enumerations.
RECORDS: Mapping[RecordKind, type[KeyedRecord]] = {
    RecordKind.INSTALLATION: Installation,
    RecordKind.NMI: NmiRecord,
}
