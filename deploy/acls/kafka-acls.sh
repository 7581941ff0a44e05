#!/bin/sh
# The auditwatch ACL set (`auditwatch acls show`): ALLOW bindings only; a broker with an
# authorizer (StandardAuthorizer) and allow.everyone.if.no.acl.found=false denies the rest.
# Apply with `auditwatch acls apply` (idempotent) as an admin principal, or run these lines.
# BOOTSTRAP: host:port; ADMIN_CONFIG: a client properties file of an admin principal;
# KAFKA_ACLS: the kafka-acls.sh of a Kafka distribution (default: on the PATH).
set -eu
: "${BOOTSTRAP:?set BOOTSTRAP to the broker list}"
: "${ADMIN_CONFIG:?set ADMIN_CONFIG to an admin client properties file}"
KAFKA_ACLS="${KAFKA_ACLS:-kafka-acls.sh}"

acl() {
  "$KAFKA_ACLS" --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG" --add "$@"
}

# ---- producer: User:auditwatch-producer
# publish audit events; Write implies Describe (metadata), and idempotent producers need no cluster ACL once they may write a topic (KIP-679)
acl --allow-principal User:auditwatch-producer --allow-host '*' --operation Write --topic audit.events --resource-pattern-type literal

# ---- worker: User:auditwatch-worker
# consume the input topic in the consumer group
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Read --topic audit.events --resource-pattern-type literal
# write alert states
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Write --topic audit.alerts --resource-pattern-type literal
# the input-quiet watch reads its alert's latest state before writing the next
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Read --topic audit.alerts --resource-pattern-type literal
# archive every valid event (the only principal that writes the archive)
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Write --topic audit.archive --resource-pattern-type literal
# dead-letter refused input with the reason
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Write --topic audit.deadletter --resource-pattern-type literal
# consume the repartition topic with the input
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Read --topic audit.detect --resource-pattern-type literal
# forward an event found in another partition than its machine's, once
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Write --topic audit.detect --resource-pattern-type literal
# restore a partition's state
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Read --topic auditwatch.state --resource-pattern-type literal
# write the state changelog at each commit
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Write --topic auditwatch.state --resource-pattern-type literal
# load the peer table every worker shares
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Read --topic auditwatch.peers --resource-pattern-type literal
# publish this worker's peer records
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Write --topic auditwatch.peers --resource-pattern-type literal
# write the per-partition ledger with each commit; without it the worker runs without a ledger and the compliance check cannot reconcile
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Write --topic auditwatch.ledger --resource-pattern-type literal
# apply on-call's acknowledgements and snoozes
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Read --topic audit.control --resource-pattern-type literal
# `run` checks the topic's config at start
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation DescribeConfigs --topic audit.events --resource-pattern-type literal
# `run` checks the topic's config at start
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation DescribeConfigs --topic audit.alerts --resource-pattern-type literal
# `run` checks the topic's config at start
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation DescribeConfigs --topic audit.archive --resource-pattern-type literal
# `run` checks the topic's config at start
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation DescribeConfigs --topic audit.deadletter --resource-pattern-type literal
# `run` checks the topic's config at start
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation DescribeConfigs --topic audit.detect --resource-pattern-type literal
# `run` checks the topic's config at start
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation DescribeConfigs --topic auditwatch.state --resource-pattern-type literal
# `run` checks the topic's config at start
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation DescribeConfigs --topic auditwatch.peers --resource-pattern-type literal
# `run` checks the topic's config at start
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation DescribeConfigs --topic auditwatch.ledger --resource-pattern-type literal
# `run` checks the topic's config at start
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation DescribeConfigs --topic audit.control --resource-pattern-type literal
# join the consumer group and commit input offsets (also inside a transaction)
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Read --group auditwatch --resource-pattern-type literal
# the state and peer readers assign partitions by hand; librdkafka still looks up their group's coordinator
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Describe --group auditwatch.restore --resource-pattern-type literal
# the input-quiet watch's reader (assigns by hand, never commits)
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Describe --group auditwatch-watch --resource-pattern-type literal
# the control topic's readers use a throwaway group each (assign by hand, never commit); librdkafka still looks up its coordinator
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Describe --group auditwatch-control- --resource-pattern-type prefixed
# exactly-once: the transactional producer `<consumer_group>-<instance id>`; unused at-least-once, granted so that switching the guarantee needs no ACL change
acl --allow-principal User:auditwatch-worker --allow-host '*' --operation Write --transactional-id auditwatch- --resource-pattern-type prefixed

# ---- oncall: User:auditwatch-oncall
# `auditwatch alerts`; ack/snooze check the alert
acl --allow-principal User:auditwatch-oncall --allow-host '*' --operation Read --topic audit.alerts --resource-pattern-type literal
# the current acknowledgements and snoozes
acl --allow-principal User:auditwatch-oncall --allow-host '*' --operation Read --topic audit.control --resource-pattern-type literal
# `auditwatch alerts ack/snooze/unsnooze`
acl --allow-principal User:auditwatch-oncall --allow-host '*' --operation Write --topic audit.control --resource-pattern-type literal
# `auditwatch deadletter list`
acl --allow-principal User:auditwatch-oncall --allow-host '*' --operation Read --topic audit.deadletter --resource-pattern-type literal
# `deadletter list` shows which dead letters were redriven
acl --allow-principal User:auditwatch-oncall --allow-host '*' --operation Read --topic audit.deadletter.redriven --resource-pattern-type literal
# the CLI's topic readers use a throwaway group each (assign by hand, never commit); librdkafka still looks up its coordinator
acl --allow-principal User:auditwatch-oncall --allow-host '*' --operation Describe --group auditwatch-reader- --resource-pattern-type prefixed
# `auditwatch alerts` shows acknowledgements through the control topic's reader: they use a throwaway group each (assign by hand, never commit); librdkafka still looks up its coordinator
acl --allow-principal User:auditwatch-oncall --allow-host '*' --operation Describe --group auditwatch-control- --resource-pattern-type prefixed

# ---- webhook: User:auditwatch-webhook
# read alert states to POST them
acl --allow-principal User:auditwatch-webhook --allow-host '*' --operation Read --topic audit.alerts --resource-pattern-type literal
# the sink's own consumer group: join it and commit what was delivered
acl --allow-principal User:auditwatch-webhook --allow-host '*' --operation Read --group auditwatch-webhook --resource-pattern-type literal
# dead-letter an alert state the endpoint never accepted (webhook_failed)
acl --allow-principal User:auditwatch-webhook --allow-host '*' --operation Write --topic audit.deadletter --resource-pattern-type literal

# ---- auditor: User:auditwatch-auditor
# producer completeness and gaps; reconciliation
acl --allow-principal User:auditwatch-auditor --allow-host '*' --operation Read --topic audit.archive --resource-pattern-type literal
# dead-letter rate; reconciliation
acl --allow-principal User:auditwatch-auditor --allow-host '*' --operation Read --topic audit.deadletter --resource-pattern-type literal
# each input partition's ledger
acl --allow-principal User:auditwatch-auditor --allow-host '*' --operation Read --topic auditwatch.ledger --resource-pattern-type literal
# reconciliation: forwarded events processed or still waiting
acl --allow-principal User:auditwatch-auditor --allow-host '*' --operation Read --topic audit.detect --resource-pattern-type literal
# reconciliation: the input's end offsets (no Read: the check needs no event)
acl --allow-principal User:auditwatch-auditor --allow-host '*' --operation Describe --topic audit.events --resource-pattern-type literal
# check the topic keeps the audit record (compaction, retention, replication)
acl --allow-principal User:auditwatch-auditor --allow-host '*' --operation DescribeConfigs --topic audit.archive --resource-pattern-type literal
# check the topic keeps the audit record (compaction, retention, replication)
acl --allow-principal User:auditwatch-auditor --allow-host '*' --operation DescribeConfigs --topic audit.deadletter --resource-pattern-type literal
# check the topic keeps the audit record (compaction, retention, replication)
acl --allow-principal User:auditwatch-auditor --allow-host '*' --operation DescribeConfigs --topic auditwatch.ledger --resource-pattern-type literal
# the compliance check's readers use a throwaway group each (assign by hand, never commit); librdkafka still looks up its coordinator
acl --allow-principal User:auditwatch-auditor --allow-host '*' --operation Describe --group auditwatch-compliance- --resource-pattern-type prefixed

# ---- reporter: User:auditwatch-reporter
# events per machine and group, new resources
acl --allow-principal User:auditwatch-reporter --allow-host '*' --operation Read --topic audit.archive --resource-pattern-type literal
# the pages of the period
acl --allow-principal User:auditwatch-reporter --allow-host '*' --operation Read --topic audit.alerts --resource-pattern-type literal
# which pages were acknowledged, and when
acl --allow-principal User:auditwatch-reporter --allow-host '*' --operation Read --topic audit.control --resource-pattern-type literal
# the digest's readers use a throwaway group each (assign by hand, never commit); librdkafka still looks up its coordinator
acl --allow-principal User:auditwatch-reporter --allow-host '*' --operation Describe --group auditwatch-digest- --resource-pattern-type prefixed
# the CLI's topic readers use a throwaway group each (assign by hand, never commit); librdkafka still looks up its coordinator
acl --allow-principal User:auditwatch-reporter --allow-host '*' --operation Describe --group auditwatch-reader- --resource-pattern-type prefixed
