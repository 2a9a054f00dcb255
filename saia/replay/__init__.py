"""saia-replay: audit, reports, what-if simulation and tamper evidence, from the log alone."""
