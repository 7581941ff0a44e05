"""Avro schemas (`*.avsc`) and the codecs between bytes and auditwatch's typed records.

`event` and `alert` are standard-library only, so `detectors` may import them; `codec` and
`registry` add fastavro. Nothing here knows Kafka.
"""
