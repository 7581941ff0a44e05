"""The Kafka side of `auditwatch run`: a small micro-batch runtime on Kafka's own machinery.

Kafka is the distributed engine, as in Kafka Streams: a consumer group spreads the input
partitions over workers; each owned input partition is one task that decodes, routes,
dedupes, archives and detects its events in one pass, with its state kept as live Python
objects and persisted as a compacted changelog topic; outputs, changelog records and input
offsets are committed together (exactly-once: one transactional producer per worker) or in
that order (at-least-once: outputs and changelog acknowledged before offsets commit).

The parts, each testable alone:

- `routing`: which input partition a machine belongs to (the producers' partitioner), and the
  repartition topic for events that arrived elsewhere.
- `state`: one partition's state, its changelog records, restore on assignment, the format
  version.
- `peers`: the peer table every worker reads in full, with a merge rule per kind of record.
- `task`: one input partition's processing of a record.
- `commit`: the at-least-once and exactly-once commit policies.
- `loop`: the worker: poll a batch, hand records to their task, punctuate, commit, recover.

Imports: confluent-kafka, and streams/schemas/detectors below the CLI.
"""
