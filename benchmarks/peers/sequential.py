"""Peer (a): the loop most people write first, one request after another.

    python benchmarks/peers/sequential.py --input F --token-url U --installation-url U
        --client-id ID --secret-file F --participant P --quota 300/3s --out outcomes.jsonl

`requests`-style: one keep-alive connection (what `requests.Session` keeps through
urllib3, here the standard library's `http.client`, so nothing needs installing), one
record at a time, request starts paced to COUNT per PERIOD, a 429 waited out for a second
and retried (up to 5 times). Every record's last status goes to --out as
`{"nmi", "status"}`; `status` is null when no answer came.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

RETRIES_429 = 5


def main() -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/peers/sequential.py")
    for flag in ("--input", "--token-url", "--installation-url", "--client-id", "--secret-file",
                 "--participant", "--quota", "--out"):  # fmt: skip
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    count, _, period = args.quota.rstrip("s").partition("/")
    interval = float(period) / int(count)  # seconds between request starts

    target = urlsplit(args.installation_url)
    conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
    secret = Path(args.secret_file).read_text(encoding="utf-8").strip()
    basic = base64.b64encode(f"{args.client_id}:{secret}".encode()).decode()
    token_path = urlsplit(args.token_url).path + "?grant_type=client_credentials"
    conn.request("POST", token_path, body=b"", headers={"Authorization": f"Basic {basic}"})
    token = json.loads(conn.getresponse().read())["acess_token"]
    headers = {
        "Authorization": f"Bearer {token}",
        "X-initiatingParticipantID": args.participant,
        "X-market": "WEM",
        "Content-Type": "application/json",
    }
    path = target.path.rstrip("/") + "/installation"

    next_start = time.monotonic()
    with open(args.input, "rb") as records, open(args.out, "w", encoding="utf-8") as out:
        for line in records:
            record = json.loads(line)
            body = json.dumps({"data": record}).encode()
            status: int | None = None
            for _ in range(RETRIES_429 + 1):
                time.sleep(max(0.0, next_start - time.monotonic()))
                next_start = max(next_start + interval, time.monotonic())
                try:
                    conn.request("POST", path, body=body, headers=headers)
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    status = None
                    conn.close()  # http.client reconnects on the next request
                    break
                if status != 429:
                    break
                time.sleep(1.0)
            out.write(json.dumps({"nmi": record["nmi"], "status": status}) + "\n")
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
