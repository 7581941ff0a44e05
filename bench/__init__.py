"""Benchmarks of auditwatch's detectors on public data sets (not run by the tests)."""
