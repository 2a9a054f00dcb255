"""A small, deterministic OpenAI-compatible server that stands in for a real model.

The demo and the tests run it inside Slurm jobs instead of vLLM: its replies are
predictable ("echo: <words of the prompt>"), its streaming speed is tunable, and it
can be told to die, which makes the platform's behaviour observable without a GPU.
"""

from saia.testservice.app import Settings, create_app

__all__ = ["Settings", "create_app"]
