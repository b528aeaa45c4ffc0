"""The data file of peer (b): one newman iteration per record.

    python benchmarks/peers/newman_data.py RECORDS.jsonl DATA.json

newman substitutes a data row's fields into the request (`{{body}}` is the whole request
body of wem-der.postman_collection.json), so each row carries the record already wrapped
as the Installation API wants it, `{"data": record}`, as a JSON string, and its NMI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def write_data(records: Path, data: Path) -> int:
    """Write the rows for every record of a JSON Lines file; return how many."""
    rows = []
    with records.open("rb") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                rows.append({"nmi": record["nmi"], "body": json.dumps({"data": record})})
    data.write_text(json.dumps(rows), encoding="utf-8")
    return len(rows)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    count = write_data(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{count} rows written to {sys.argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
