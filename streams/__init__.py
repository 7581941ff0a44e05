"""auditwatch's Kafka side: configuration, topic management, the stream runtime and the CLI.

This is the only package that imports Kafka clients; `detectors` and `schemas` never do.
"""

import contextlib as _contextlib
import warnings as _warnings

# authlib (confluent-kafka's schema registry client imports it, and Quix Streams imports that)
# warns on import that it falls back to httpx, through an "always" filter it installs when its
# `deprecate` module loads: a line of noise on every worker start, about a dependency's
# dependency. Load that module first (half a millisecond, unlike the registry client), so the
# filter below comes after its own and wins; every other warning keeps its filters.
with _contextlib.suppress(ImportError):  # not installed: nothing to silence
    import authlib.deprecate  # noqa: F401
_warnings.filterwarnings("ignore", "The httpx module is deprecated", DeprecationWarning)
