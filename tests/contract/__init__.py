"""Contract tests: one behaviour, checked against every store backend."""
