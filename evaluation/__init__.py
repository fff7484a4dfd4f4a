"""Evaluation: where a detector's output first meets the ground truth. It runs after the detectors
(sweeps/cell.py, and `job=scan`), reads the model store's manifest and what the detector wrote, and
adds to the record what only the truth can say (the model's kind, its triggers and targets, Sim of a
reversed feature against each real trigger). No detector imports this package (tests/test_detectors.py)."""
