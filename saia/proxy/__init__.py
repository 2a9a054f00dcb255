"""The hub's OpenAI-compatible proxy: routing, cold-start waits, streaming, metering."""
