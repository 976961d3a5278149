"""What every benchmark does with its result: print it, and write it to --output-json when given."""

from __future__ import annotations

import json
from pathlib import Path


def cpu_name() -> str:
    """The CPU model, as every result records it (this project's machines change between sessions)."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "unknown")


def report(result: dict, output_json: Path | None) -> None:
    print(json.dumps(result, indent=2))
    if output_json:
        output_json.parent.mkdir(parents=True, exist_ok=True)
        output_json.write_text(json.dumps(result, indent=2) + "\n")
