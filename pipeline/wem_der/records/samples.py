"""Realistic synthetic records: the bundled sample, test data and benchmark loads.

Western Australian NMIs (the 8001... range), rooftop solar, home batteries and EV chargers
with plausible inverter settings. Deterministic for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

INVERTERS = [
    ("Fronius", "Primo 5.0-1", "Solar PV Inverter"),
    ("SMA", "Sunny Boy 5.0", "Solar PV Inverter"),
    ("Sungrow", "SG5.0RS", "Solar PV Inverter"),
    ("GoodWe", "GW5000D-NS", "Solar PV Inverter"),
    ("Tesla", "Powerwall 2", "Battery Storage Inverter"),
    ("Sungrow", "SH5.0RS", "Hybrid Inverter"),
    ("Wallbox", "Quasar 2", "EVSE V2G"),
    ("Zappi", "ZAPPI-2H07UW", "EVSE no V2G"),
]
DEVICE_TYPE = {
    "Solar PV Inverter": "Solar PV",
    "Battery Storage Inverter": "Storage",
    "Hybrid Inverter": "Solar PV",
    "EVSE V2G": "Storage",
    "EVSE no V2G": "Controlled load",
}


def nmi(i: int) -> str:
    """A ten-character WA NMI, unique per index."""
    return f"8001{i:06d}"


def installation(i: int, rng: random.Random) -> dict[str, Any]:
    """One installation record with one or two AC connections."""
    connections: list[dict[str, Any]] = []
    approved = 0.0
    for c in range(1 + (rng.random() < 0.3)):
        maker, model, equipment = rng.choice(INVERTERS)
        capacity = rng.choice([3.0, 4.6, 5.0, 6.0, 8.2, 10.0])
        approved += capacity
        commissioned = date(2020, 1, 1) + timedelta(days=rng.randrange(1800))
        devices = [
            {
                "nspDeviceId": f"D{i:06d}-{c}",
                "type": DEVICE_TYPE[equipment],
                "count": 1,
                "status": "Active",
                "details": {
                    "manufacturerName": maker,
                    "modelNumber": model,
                    "nominalRatedCapacity": capacity,
                    **(
                        {"nominalStorageCapacity": 13.5} if equipment != "Solar PV Inverter" else {}
                    ),
                },
            }
        ]
        connections.append(
            {
                "nspConnectionId": f"C{i:06d}-{c}",
                "commissioningDate": commissioned.isoformat(),
                "equipmentType": equipment,
                "count": 1,
                "status": "Active",
                "equipmentInjectionCapacity": capacity,
                "details": {
                    "serialNumbers": [f"SN{rng.randrange(10**9):09d}"],
                    "manufacturerName": maker,
                    "modelNumber": model,
                    "equipmentStandard": "AS/NZS 4777.2:2020",
                    "regionSetting": "Australia B",
                    "invVoltWattRespMode": "Enabled",
                    "invWattRespV1": 253,
                    "invWattRespV2": 260,
                    "invVoltVarRespMode": "Enabled",
                    "invVarRespV1": 205,
                    "invVarRespV2": 220,
                    "invVarRespV3": 240,
                    "invVarRespV4": 258,
                    "powerRateLimitMode": "Enabled",
                    "powerRampRate": 16.67,
                },
                "devices": devices,
            }
        )
    return {
        "nmi": nmi(i),
        "jobNumber": f"JOB-{2026_000000 + i}",
        "approvedCapacity": approved,
        "exportLimitkW": min(5.0, approved),
        "availablePhasesCount": 1,
        "installedPhasesCount": 1,
        "islandableInstallation": "No",
        "centralProtectionControl": "No",
        "installerId": f"EC{rng.randrange(10**5):05d}",
        "acConnections": connections,
    }


def installations(count: int, *, seed: int = 0, start: int = 0) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)  # noqa: S311 - test data, not cryptography
    for i in range(start, start + count):
        yield installation(i, rng)


def nmi_record(i: int) -> dict[str, Any]:
    return {
        "nmi": nmi(i),
        "substation": "SUB-PERTH-01",
        "postCode": "6000",
        "tni": "WPER",
        "status": "Active",
    }
