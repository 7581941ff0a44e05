"""The performance harness (`python -m bench.perf`, `make bench`): throughput, alert latency,
state size and restore time of `auditwatch run`, against a plain-consumer ceiling, a faust peer
and `auditwatch replay`, on one preloaded dataset. See bench/README.md and `--help`.

May import streams/, schemas/, detectors/ and the benchmark's own tools (confluent-kafka,
fastavro, py-spy as a process; faust only in the faust peer's process). Not Quix Streams:
`auditwatch run` no longer uses it."""
