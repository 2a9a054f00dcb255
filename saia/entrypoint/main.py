"""saia-entrypoint: the only program the hub's SSH key may run on the login node.

authorized_keys names it as the forced command::

    command="/usr/bin/python3 -I /opt/saia/saia-entrypoint.pyz --config /opt/saia/entrypoint.toml",
        restrict ssh-ed25519 ...

sshd puts whatever the client asked to run into ``SSH_ORIGINAL_COMMAND``; that
string is parsed by saia.protocol.grammar before the configuration is even
read, and nothing else of the client's reaches a command line. No shell is ever
involved; Slurm's commands run as argv lists. Request bodies come on stdin.

=================================  =========================================  =====
command                            answer on stdout                           exit
=================================  =========================================  =====
keep-alive                         ``ok``; in login-node placement it also     0
                                   starts a rate-limited controller pass
status                             one JSON line: the configured services      0
                                   and saia's jobs of each, the port range
session                            HTTP/2 on stdin/stdout, many concurrent     0
                                   requests until the hub closes the channel:
                                   everything the hub does (the paths are
                                   saia.protocol.session's)
legacy request (5 lines)           a raw HTTP/1.1 response as the original     0
                                   cloud_interface.sh gives it                 (see
                                   (saia.entrypoint.legacy): 400, 413, 404,    below)
                                   503, or the backend's own
=================================  =========================================  =====

Refusals go to stderr as one line, ``saia-entrypoint: <reason>``, with these
exit codes (sysexits.h, saia.protocol.exits); nothing has been changed when a
refusal is reported. In a session, a refusal answers its own stream with the
HTTP status of its exit code (saia.protocol.session) and the session goes on:

==  ==============================================================================
64  not a command: unknown verb, arguments to a verb, shell metacharacters, no
    command at all (a login); in a session, an argument that does not match its
    pattern
65  bad data: over 16 KiB (1 KiB for a verb), NUL bytes, invalid UTF-8, control
    characters; a malformed request on stdin; a hub that breaks HTTP/2 in a
    session; legacy 400 and 413
69  unavailable: the job's port does not answer; sbatch refused the
    job; legacy 503
70  internal error (a bug)
75  temporary: Slurm did not answer in time, or the submit lock is busy; retry
77  not permitted: not one of saia's jobs, a job that is not running, a service
    this login node does not allow, a port outside the range or in use by another
    job, a token used by another job; legacy 404
78  the entrypoint's configuration is missing or wrong (the message names the
    file and field), or the forced command lacks ``--config /absolute/path``
==  ==============================================================================

Nothing is logged here; stderr carries the reasons to the client, and never a
header, a body or any other part of a request.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, BinaryIO

from saia.entrypoint import settings
from saia.entrypoint.config import ConfigError, EntrypointConfig, load
from saia.entrypoint.context import Context
from saia.entrypoint.refusal import Refusal
from saia.protocol import exits, grammar

if TYPE_CHECKING:
    from saia.entrypoint.slurm import LoginSlurm

PROGRAM = "saia-entrypoint"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        invocation = settings.from_environment(sys.argv[1:] if argv is None else argv)
    except settings.UsageError as error:
        return _refused(str(error), exits.CONFIG)
    if invocation.command is None:
        return _refused("no command given; this key only runs saia-entrypoint verbs", exits.REFUSED)
    try:
        command = grammar.parse(invocation.command)
    except grammar.CommandRefused as refused:
        return _refused(refused.reason, refused.exit_code)
    return _run(command, invocation)


def _run(command: grammar.Command, invocation: settings.Invocation) -> int:
    try:
        config = load(invocation.config)
    except ConfigError as error:
        return _refused(str(error), exits.CONFIG)
    context = Context(
        config=config,
        read=_reader(sys.stdin.buffer),
        write=_flushing_writer(sys.stdout.buffer),
        clock=time.time,
        environment=invocation.environment,
        make_slurm=lambda: _login_slurm(config, invocation.environment),
    )
    try:
        return _dispatch(command, context)
    except Refusal as refusal:
        return _refused(refusal.message, refusal.exit_code)
    except BrokenPipeError:
        # Python would flush stdout once more at exit and complain on stderr about it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _refused("the client closed the channel", exits.UNAVAILABLE)
    except Exception as error:  # the last line of defence: a reason, never a traceback
        # Only the type: a message might quote part of a request, headers included.
        return _refused(f"internal error ({type(error).__name__})", exits.SOFTWARE)


def _dispatch(command: grammar.Command, context: Context) -> int:
    # Imports inside: each verb pays only for the modules it needs (sshd starts a
    # process per channel, and keep-alive must stay cheap).
    if command is grammar.Verb.KEEP_ALIVE:
        from saia.entrypoint.placement import keep_alive  # noqa: PLC0415 (start-up cost)

        context.write(keep_alive(context.config, context.clock(), context.environment))
        return exits.OK
    if command is grammar.Verb.STATUS:
        from saia.entrypoint import queue  # noqa: PLC0415 (start-up cost)

        context.write(queue.status(context))
        return exits.OK
    if command is grammar.Verb.SESSION:
        from saia.entrypoint.session import serve_session  # noqa: PLC0415 (start-up cost)

        # The channel itself is the HTTP/2 connection: raw stdin and stdout.
        return serve_session(context, sys.stdin.buffer, sys.stdout.buffer)
    from saia.entrypoint import legacy_relay  # noqa: PLC0415 (start-up cost)

    return legacy_relay.answer(command.text, context)


def _login_slurm(config: EntrypointConfig, environment: Mapping[str, str]) -> LoginSlurm:
    from saia.entrypoint.slurm import LoginSlurm  # noqa: PLC0415 (start-up cost)

    # Only this account's jobs are saia's: another user could name a job like saia's.
    return LoginSlurm(config, environment, pwd.getpwuid(os.getuid()).pw_name)


def _reader(stream: BinaryIO) -> Callable[[], bytes]:
    # read1: whatever has arrived (up to 64 KiB), so a body streams instead of waiting.
    read1 = getattr(stream, "read1", stream.read)
    return lambda: bytes(read1(64 * 1024))


def _flushing_writer(stream: BinaryIO) -> Callable[[bytes], None]:
    # Streamed answers (server-sent events) must leave at once, not when a buffer fills.
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


def _refused(reason: str, exit_code: int) -> int:
    # If the client is gone, the exit code is all that is left to say.
    with contextlib.suppress(OSError):
        print(f"{PROGRAM}: {reason}", file=sys.stderr, flush=True)
    return exit_code
