"""`python -m analyze collect SWEEP_DIR [--out FILE]` and `python -m analyze report SWEEP_DIR [--out DIR]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analyze.collect import TABLE_NAME, collect, summary, write_parquet_atomic
from analyze.report import NoResults, report, table1_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyze", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="every result.json under SWEEP_DIR into one parquet table")
    c.add_argument("sweep_dir", type=Path)
    c.add_argument("--out", type=Path, help=f"table to write (default SWEEP_DIR/{TABLE_NAME})")
    r = sub.add_parser("report", help="tables, figures and report.md from SWEEP_DIR's results")
    r.add_argument("sweep_dir", type=Path)
    r.add_argument("--out", type=Path, help="report directory (default SWEEP_DIR/report)")
    r.add_argument("--bootstrap", type=int, default=1000, help="resamples for the confidence intervals")
    args = parser.parse_args(argv)

    if not args.sweep_dir.is_dir():
        print(f"not a directory: {args.sweep_dir}", file=sys.stderr)
        return 2
    if args.command == "collect":
        df = collect(args.sweep_dir)
        if df.empty:
            print(f"no result.json under {args.sweep_dir}", file=sys.stderr)
            return 2
        path = write_parquet_atomic(df, args.out or args.sweep_dir / TABLE_NAME)
        print(f"{summary(df)} -> {path}")
        return 0
    try:
        tables = report(args.sweep_dir, args.out, n_boot=args.bootstrap)
    except NoResults as exc:
        print(exc, file=sys.stderr)
        return 2
    print(table1_text(tables))
    print((args.out or args.sweep_dir / "report") / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
