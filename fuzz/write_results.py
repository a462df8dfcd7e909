"""Write the "Fuzzing" section of benchmarks/RESULTS.md from the last `make fuzz` run's logs
(build/fuzz/logs/<target>.log). Usage: python fuzz/write_results.py SECONDS [note...]"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, today, write_section  # noqa: E402

TARGETS = {
    "decode": "`decode` (strict)",
    "decode_tolerant": "`decode_tolerant`",
    "tables": "`parse_header` + `with_tables`",
    "coefficients": "`read_coefficients`",
    "mcu_validity": "`mcu_validity`",
    "scan_grammar": "`ScanGrammar` step/feed/allowed_bytes",
    "token_grammar": "`TokenGrammar` mask/advance",
    "bpe": "`Bpe` vocabulary + encode/decode",
    "bpe_train": "`bpe_train` + round trip",
}


def stat(log: str, name: str) -> int | None:
    m = re.findall(rf"stat::{name}:\s*(\d+)", log)
    return int(m[-1]) if m else None


def main() -> None:
    seconds = sys.argv[1]
    notes = " ".join(sys.argv[2:])
    rows = ["| target | entry point | executions | exec/s | crashes |", "|---|---|---:|---:|---:|"]
    total = 0
    for t, what in TARGETS.items():
        path = ROOT / "build" / "fuzz" / "logs" / f"{t}.log"
        log = path.read_text(errors="replace") if path.exists() else ""
        runs, speed = stat(log, "number_of_executed_units"), stat(log, "average_exec_per_sec")
        crashed = "ERROR:" in log or "FUZZ_CHECK failed" in log or "deadly signal" in log
        total += runs or 0
        if runs is None:
            rows.append(f"| {t} | {what} | ? | ? | ? |")
        else:
            rows.append(f"| {t} | {what} | {runs:,} | {speed or 0:,} | {int(crashed)} |")
    body = (
        f"{today()} · {machine()} · libFuzzer (clang 14) + ASan + UBSan, "
        f"`make fuzz SECONDS={seconds}` ({seconds} s per target, one process each, "
        "sharing 2 cores with other work).\n\n"
        + "\n".join(rows)
        + f"\n\nTotal: {total:,} executions.\n"
    )
    if notes:
        body += "\n" + notes + "\n"
    write_section("Fuzzing", body)


if __name__ == "__main__":
    main()
