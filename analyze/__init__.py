"""Analysis: collect result.json files into one table and render the paper's tables and figures.

    python -m analyze collect SWEEP_DIR [--out FILE]    # -> SWEEP_DIR/results.parquet
    python -m analyze report SWEEP_DIR [--out DIR]      # -> SWEEP_DIR/report/report.md

From Python: `analyze.collect.collect(sweep_dir)` and `analyze.report.report(sweep_dir, out_dir)`.
(Not re-exported here: the functions would shadow their modules of the same name.)
"""
