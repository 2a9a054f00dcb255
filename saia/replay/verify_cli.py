"""The tamper-evidence commands of saia-replay: keygen, seal and verify."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from saia import config
from saia.adapters.store import EventLog
from saia.replay.checkpoints import new_key_pair, private_key, public_key
from saia.replay.progress import progress
from saia.replay.rebuild import compare_projections, projections, rebuild
from saia.replay.seal import INTERVAL, SealRefused, seal
from saia.replay.tamper import check_chain


def add_commands(commands: Any) -> None:
    keygen = commands.add_parser("keygen", help="write a new Ed25519 key pair (KEY, KEY.pub)")
    keygen.add_argument("--out", type=Path, required=True)
    keygen.set_defaults(run=_keygen)

    sealing = commands.add_parser("seal", help="extend the signed checkpoint file to the log's end")
    sealing.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    sealing.add_argument("--out", type=Path, required=True, help="checkpoint file")
    sealing.add_argument("--interval", type=int, default=INTERVAL, help="events per checkpoint")
    sealing.set_defaults(run=_seal)

    again = commands.add_parser("rebuild", help="build projections again from the start of the log")
    again.add_argument("--projection", action="append", default=[], metavar="NAME",
                       choices=[p.NAME for p in projections()],
                       help="only this one (repeatable); all by default")  # fmt: skip
    again.set_defaults(run=_rebuild)

    verify = commands.add_parser("verify", help="rebuild projections; check the checkpoints")
    verify.add_argument("--checkpoints", type=Path, help="checkpoint file written by seal")
    verify.add_argument("--public-key", type=Path, help="Ed25519 public key (PEM)")
    verify.set_defaults(run=_verify)


def _keygen(args: argparse.Namespace) -> int:
    new_key_pair(args.out, args.out.with_name(args.out.name + ".pub"))
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    log = EventLog(config.load(args.config).store)
    try:
        with progress("rebuild", log.last_position()) as on_batch:
            position = rebuild(log, args.projection, on_batch)
    finally:
        log.close()
    names = ", ".join(args.projection) or "all projections"
    print(f"rebuilt {names} up to position {position}")
    return 0


def _seal(args: argparse.Namespace) -> int:
    key = private_key(args.key)
    log = EventLog(config.load(args.config).store)
    try:
        with progress("seal", log.last_position()) as on_batch:
            sealed = seal(log, args.out, key, args.interval, on_batch)
    except SealRefused as refused:
        print(f"saia-replay: {refused}", file=sys.stderr)
        return 1
    print(f"{sealed.checkpoints} checkpoint(s) written; sealed up to position {sealed.position}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    if (args.checkpoints is None) != (args.public_key is None):
        print("saia-replay: --checkpoints and --public-key go together", file=sys.stderr)
        return 2
    store = config.load(args.config).store
    failed = False
    log = EventLog(store)
    total = log.last_position()
    if args.checkpoints is not None:
        with progress("verify chain", total) as on_batch:
            chain = check_chain(log, args.checkpoints, public_key(args.public_key), on_batch)
        if chain.finding is not None:
            print(f"TAMPERED {chain.finding}", file=sys.stderr)
            failed = True
        else:
            print(f"chain ok: {chain.sealed} events sealed, {chain.unsealed} not yet sealed")
    with progress("rebuild", total) as on_batch:
        mismatches = compare_projections(store, on_batch)
    for mismatch in mismatches:
        print(f"MISMATCH {mismatch}", file=sys.stderr)
    if not mismatches:
        print("projections ok: each stored one equals a rebuild from the log")
    return 1 if failed or mismatches else 0
