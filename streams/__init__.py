"""auditwatch's Kafka side: configuration, topic management, the stream runtime and the CLI.

This is the only package that imports Kafka clients; `detectors` and `schemas` never do.
"""
