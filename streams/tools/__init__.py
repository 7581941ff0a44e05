"""Offline tools: replay, backtest, report, synthetic traffic, seeding, file readers and the
producer. They use the processor and detectors, never the runtime."""
