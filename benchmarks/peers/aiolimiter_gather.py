"""Peer (c): the quick concurrent script, `aiolimiter.AsyncLimiter(COUNT, PERIOD)` + gather.

    python benchmarks/peers/aiolimiter_gather.py --input F --token-url U
        --installation-url U --client-id ID --secret-file F --participant P
        --quota 300/3s --out outcomes.jsonl [--retries N]

What a competent engineer writes in ten minutes: one task per record, all gathered, each
taking the limiter before its request. With --retries N a 429 is waited out for a second
and the request sent again, up to N times (each retry takes the limiter again). Every
record's last status goes to --out as `{"nmi", "status"}`; `status` is null when no
answer came.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter


async def run(
    args: argparse.Namespace, records: list[dict[str, Any]], secret: str
) -> list[tuple[str, int | None]]:
    count, _, period = args.quota.rstrip("s").partition("/")
    limiter = AsyncLimiter(int(count), float(period))
    url = args.installation_url.rstrip("/") + "/installation"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.post(
            args.token_url,
            params={"grant_type": "client_credentials"},
            auth=aiohttp.BasicAuth(args.client_id, secret),
        ) as response:
            token = (await response.json())["acess_token"]
        headers = {
            "Authorization": f"Bearer {token}",
            "X-initiatingParticipantID": args.participant,
            "X-market": "WEM",
        }

        async def send(record: dict[str, Any]) -> tuple[str, int | None]:
            status: int | None = None
            for _ in range(args.retries + 1):
                async with limiter:
                    try:
                        async with session.post(
                            url, json={"data": record}, headers=headers
                        ) as response:
                            await response.read()
                            status = response.status
                    except (aiohttp.ClientError, TimeoutError):
                        return record["nmi"], None
                if status != 429:
                    break
                await asyncio.sleep(1.0)
            return record["nmi"], status

        return await asyncio.gather(*(send(record) for record in records))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/peers/aiolimiter_gather.py")
    for flag in ("--input", "--token-url", "--installation-url", "--client-id", "--secret-file",
                 "--participant", "--quota", "--out"):  # fmt: skip
        parser.add_argument(flag, required=True)
    parser.add_argument("--retries", type=int, default=0, help="resend a 429 up to N times")
    args = parser.parse_args()
    records = [json.loads(line) for line in Path(args.input).read_bytes().splitlines() if line]
    secret = Path(args.secret_file).read_text(encoding="utf-8").strip()
    results = asyncio.run(run(args, records, secret))
    with open(args.out, "w", encoding="utf-8") as out:
        for nmi, status in results:
            out.write(json.dumps({"nmi": nmi, "status": status}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
