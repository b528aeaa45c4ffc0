"""Pydantic models of the records a client submits to AEMO's WEM DER Register; no I/O.

Field names are the JSON names of AEMO's operation definitions, odd casings included
(`exportLimitkW` beside `importLimitKw`), so a model dumps to exactly what the API reads.
Server-maintained fields (`SERVER_FIELDS`) are not part of a submission: the register
assigns them. Which strings are enumerations, and their values, is data (enumerations.py).
Turning a decoded value into a model, or into the reasons it is not one, is validation.py's.
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from pipeline.enumerations import Enumerations, bundled_enumerations

# Fields the register maintains and returns; a client that sends them is confused about
# which side owns them (API-NOTES.md, "Server-maintained fields").
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


def _table(info: ValidationInfo) -> Enumerations:
    context = info.context or {}
    table = context.get("enumerations")
    return table if isinstance(table, Enumerations) else bundled_enumerations()


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
# refused; checked in pydantic's core, not a Python call per field. The model is only a
# check: what is sent is the record as decoded, so an int is never made a float.
Number = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
IsoDate = Annotated[str, AfterValidator(_iso_date)]


class _Record(BaseModel):
    """Strict types; unknown fields and enumerations are checked by validation.py's walk."""

    # strict: "5" is not a number and 1 is not a string; a client that sends the wrong
    # type would only learn it from a 400 that costs a request. Unknown fields are
    # ignored here because validation.py reports them (with a did-you-mean) from the
    # decoded record, which is also what gets sent.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    kind: ClassVar[RecordKind] = RecordKind.INSTALLATION


class DeviceDetails(_Record):
    manufacturerName: str | None = None
    modelNumber: str | None = None
    nominalRatedCapacity: Number | None = None
    nominalLoadCapacity: Number | None = None
    nominalStorageCapacity: Number | None = None


class Device(_Record):
    nspDeviceId: str | None = None
    type: str | None = None
    comments: str | None = None
    count: Count | None = None
    status: str | None = None
    details: DeviceDetails | None = None


class AcConnectionDetails(_Record):
    serialNumbers: list[str] | None = None
    manufacturerName: str | None = None
    modelNumber: str | None = None
    equipmentSeries: str | None = None
    equipmentStandard: str | None = None
    regionSetting: str | None = None
    additionalRequirements: str | None = None
    sustainOpOvervoltLimit: Number | None = None
    stopAtOverFreq: Number | None = None
    stopAtUnderFreq: Number | None = None
    dredInverterInteraction: str | None = None
    invVoltWattRespMode: str | None = None
    invWattRespV1: Number | None = None
    invWattRespV2: Number | None = None
    invWattRespV3: Number | None = None
    invWattRespV4: Number | None = None
    invWattRespPAtV1: Number | None = None
    invWattRespPAtV2: Number | None = None
    invWattRespPAtV3: Number | None = None
    invWattRespPAtV4: Number | None = None
    invVoltVarRespMode: str | None = None
    invVarRespV1: Number | None = None
    invVarRespV2: Number | None = None
    invVarRespV3: Number | None = None
    invVarRespV4: Number | None = None
    invVarRespQAtV1: Number | None = None
    invVarRespQAtV2: Number | None = None
    invVarRespQAtV3: Number | None = None
    invVarRespQAtV4: Number | None = None
    invReactivePowerMode: str | None = None
    invFixReactivePower: Number | None = None
    fixPowerFactorMode: str | None = None
    fixPowerFactor: Number | None = None
    fixPowerFactorQuad: str | None = None
    powerRespMode: str | None = None
    referencePointP1: Number | None = None
    referencePointP2: Number | None = None
    powerFactorAtP1: Number | None = None
    powerFactorQuadAtP1: str | None = None
    powerFactorAtP2: Number | None = None
    powerFactorQuadAtP2: str | None = None
    powerRateLimitMode: str | None = None
    powerRampRate: Number | None = None
    reactivePowerRegulation: str | None = None
    voltageSetPoint: Number | None = None
    voltageSetPointUnit: str | None = None
    deadband: Number | None = None
    droop: Number | None = None
    baseForDroop: Number | None = None
    reactivePowerSourceLimit: Number | None = None
    reactivePowerSinkLimit: Number | None = None
    reactiveFixPowerFactor: Number | None = None
    reactiveFixPowerFactorQuad: str | None = None
    generatorRampRate: str | None = None
    powerRampGradient: Number | None = None
    frequencySensitiveMode: str | None = None
    frequencyDeadband: Number | None = None
    frequencyDroop: Number | None = None


class AcConnection(_Record):
    nspConnectionId: str | None = None
    commissioningDate: IsoDate | None = None
    equipmentType: str | None = None
    count: Count | None = None
    status: str | None = None
    equipmentInjectionCapacity: Number | None = None
    equipmentWithdrawalCapacity: Number | None = None
    evseOwnershipStatus: str | None = None
    authorisedAgent: str | None = None
    managementMethod: str | None = None
    frequencyRateOfChange: Number | None = None
    voltageVectorShift: Number | None = None
    interTripScheme: str | None = None
    neutralVoltageDisplacement: Number | None = None
    details: AcConnectionDetails | None = None
    devices: list[Device] | None = None


class KeyedRecord(_Record):
    """A whole record of either kind, keyed by its NMI: what `validate_record` returns."""

    nmi: str

    @field_validator("nmi", mode="after")
    @classmethod
    def _nmi_format(cls, value: str, info: ValidationInfo) -> str:
        pattern = _table(info).formats.get("nmi")
        if pattern is not None and not pattern.fullmatch(value):
            raise ValueError(f"expected an NMI matching {pattern.pattern}")
        return value


class Installation(KeyedRecord):
    """The `data` object of an Installation v2 create or update."""

    jobNumber: str | None = None
    approvedCapacity: Number | None = None
    loadCapacity: Number | None = None
    exportLimitkW: Number | None = None
    importLimitKw: Number | None = None
    availablePhasesCount: Count | None = None
    installedPhasesCount: Count | None = None
    islandableInstallation: str | None = None
    centralProtectionControl: str | None = None
    underFrequencyProtection: Number | None = None
    underFrequencyProtectionDelay: Number | None = None
    overFrequencyProtection: Number | None = None
    overFrequencyProtectionDelay: Number | None = None
    underVoltageProtection: Number | None = None
    underVoltageProtectionDelay: Number | None = None
    overVoltageProtection: Number | None = None
    overVoltageProtectionDelay: Number | None = None
    sustainedOverVoltage: Number | None = None
    sustainedOverVoltageDelay: Number | None = None
    frequencyRateOfChange: Number | None = None
    voltageVectorShift: Number | None = None
    interTripScheme: str | None = None
    neutralVoltageDisplacement: Number | None = None
    otherProtection: str | None = None
    installerId: str | None = None
    comments: str | None = None
    acConnections: list[AcConnection] | None = None


class NmiRecord(KeyedRecord):
    """The body of an NMI v1 create or update (not wrapped in `data`)."""

    kind: ClassVar[RecordKind] = RecordKind.NMI
    substation: str | None = None
    postCode: str | None = None
    tni: str | None = None
    status: str | None = None

    @field_validator("postCode", mode="after")
    @classmethod
    def _post_code(cls, value: str | None, info: ValidationInfo) -> str | None:
        pattern = _table(info).formats.get("postCode")
        if value is not None and pattern is not None and not pattern.fullmatch(value):
            raise ValueError(f"expected a post code matching {pattern.pattern}")
        return value


MODELS: dict[RecordKind, type[KeyedRecord]] = {
    RecordKind.INSTALLATION: Installation,
    RecordKind.NMI: NmiRecord,
}
