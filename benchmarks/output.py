"""What every benchmark does with its result: print it, and write it to --output-json when given."""

from __future__ import annotations

import json
from pathlib import Path


def report(result: dict, output_json: Path | None) -> None:
    print(json.dumps(result, indent=2))
    if output_json:
        output_json.parent.mkdir(parents=True, exist_ok=True)
        output_json.write_text(json.dumps(result, indent=2) + "\n")
