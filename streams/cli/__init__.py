"""The commands: one module per command family, each registering its parser (`main` builds
the whole parser). Uses the runtime, the tools and ops; nothing below imports it."""
