"""Which verb does what: a dispatch that imports each verb's module only when it runs.

Handlers are plain functions of the command and a Context. The modules behind
them differ a lot in start-up cost (the Slurm adapter pulls in eventsourcing;
forward needs h11; probe needs httpx), and sshd starts one process per
channel, so ``keep-alive`` must not pay for any of them.
"""

from __future__ import annotations

import sys

from saia.entrypoint import exits, grammar
from saia.entrypoint.context import Context, Refusal


def run(command: grammar.Command, context: Context) -> int:
    # Deferred imports below: start-up cost, paid only by the verb that needs the module.
    match command:
        case grammar.KeepAlive():
            code = keep_alive(context)
        case grammar.Jobs() | grammar.Status() | grammar.Submit() | grammar.Cancel():
            from saia.entrypoint import queue_verbs  # noqa: PLC0415 (start-up cost)

            code = queue_verbs.run(command, context)
        case grammar.Probe() | grammar.Forward() | grammar.Legacy():
            from saia.entrypoint import http_verbs  # noqa: PLC0415 (start-up cost)

            code = http_verbs.run(command, context)
        case grammar.Session():
            from saia.entrypoint.session import serve_session  # noqa: PLC0415 (start-up cost)

            # The channel itself is the HTTP/2 connection: raw stdin and stdout.
            code = serve_session(context, sys.stdin.buffer, sys.stdout.buffer)
    return code


def keep_alive(context: Context) -> int:
    context.write(b"ok\n")
    placement = context.config.login_node
    if placement is not None:
        from saia.entrypoint.placement import trigger_pass  # noqa: PLC0415 (start-up cost)

        config = context.config
        lock, stamp = config.keep_alive_lock, config.keep_alive_stamp
        try:
            trigger_pass(placement, lock, stamp, context.clock(), context.environment)
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            message = f"login_node: cannot start a controller pass: {where}{error.strerror}"
            raise Refusal(message, exits.CONFIG) from None
    return exits.OK
