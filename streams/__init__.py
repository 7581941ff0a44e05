"""auditwatch's Kafka side: configuration, topic management, the stream runtime and the CLI.

This is the only package that imports Kafka clients; `detectors` and `schemas` never do.
"""

import contextlib as _contextlib
import warnings as _warnings

# authlib (confluent-kafka's schema registry client imports it, and Quix Streams imports that)
# warns on import that it falls back to httpx, through an "always" filter it installs itself:
# a line of noise on every `auditwatch` start, about a dependency's dependency. Import it once
# with that one message ignored; every other warning keeps its filters.
with _warnings.catch_warnings():
    with _contextlib.suppress(ImportError):  # not installed: nothing to silence
        import authlib.deprecate  # noqa: F401
    _warnings.filterwarnings("ignore", "The httpx module is deprecated", DeprecationWarning)
    import confluent_kafka.schema_registry  # noqa: F401
