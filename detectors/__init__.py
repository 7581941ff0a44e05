"""Pure detection logic: per-machine online baselines that score before they learn.

Imports only the standard library, numpy, river and the stdlib-only record modules of
`schemas` (`schemas.event`, `schemas.alert`). Nothing here knows Kafka or bytes.
"""
