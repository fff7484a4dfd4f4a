"""Baseline detectors registered beside AMDET (conf/detector/): what a table's AMDET row is measured against."""
