#!/usr/bin/env python3
"""Two users chatting through a ringrouter.

Demo (default): alice and bob log in, become contacts (alice asks, bob accepts;
each then sees the other's presence), and exchange a few lines; each side receives
on its own thread while it sends, the way a chat program would. Before each line
the writer sends a typing indicator (an ephemeral message: live sessions only,
never stored), and the reader marks what it got read (a read receipt goes back).
At the end alice sets herself away: bob is told, and asks for it too.

    python examples/chat.py [--addr 127.0.0.1:7878]

Interactive: type lines to send them to --to; received lines are printed. The
first run asks --to to be a contact; lines starting with "/" are commands:
/accept USER, /block USER, /contacts, /away TEXT, /online, /presence USER.

    python examples/chat.py --user alice --to bob      # in one terminal
    python examples/chat.py --user bob --to alice      # in another
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Dict, List, Optional

import ringrouter


def receive_loop(
    client: ringrouter.Client, name: str, log: List[str], names: Optional[Dict[str, str]] = None
) -> None:
    """Prints every message, typing indicator, read receipt, contact change, presence
    and room event until the connection closes; marks each message read."""
    show = lambda user: (names or {}).get(user, user)  # noqa: E731
    for msg in client:
        if isinstance(msg, ringrouter.ContactEvent):
            print(f"{name}: contact {show(msg.user)}: {msg.kind}", flush=True)
            continue
        if isinstance(msg, ringrouter.Presence):
            text = f" ({msg.text})" if msg.text else ""
            print(f"{name}: {show(msg.user)} is {msg.status}{text}", flush=True)
            continue
        if isinstance(msg, ringrouter.Event):
            print(f"{name}: {msg.user} {msg.kind} {msg.room}", flush=True)
            continue
        if isinstance(msg, ringrouter.Receipt):
            if msg.user != client.user:  # not one of our own devices
                print(f"{name}: {show(msg.user)} read up to message {msg.msg_id}", flush=True)
            continue
        if msg.ephemeral:
            print(f"{name}: {show(msg.sender)} is typing...", flush=True)
            continue
        if msg.outgoing:  # a line we sent from another device
            print(f"{name} (other device) to {show(msg.to_user or '')}: "
                  f"{msg.payload.decode(errors='replace')}", flush=True)
            continue
        line = f"{name} got from {show(msg.sender)}: {msg.payload.decode(errors='replace')}"
        log.append(line)
        print(line, flush=True)
        if msg.room is None:
            try:
                client.mark_read(user=msg.sender, msg_id=msg.msg_id)
            except ringrouter.RouterError:
                pass  # closing


def demo(addr: str) -> int:
    suffix = f"-{os.getpid()}"
    alice_name, bob_name = "alice" + suffix, "bob" + suffix
    script = [
        ("alice", "hi bob"),
        ("bob", "hi alice! how are you?"),
        ("alice", "fine, testing this router"),
        ("bob", "it is fast"),
    ]
    log: List[str] = []
    # The demo's user names carry the pid (runs on a shared router never mix);
    # the transcript shows the plain names.
    names = {alice_name: "alice", bob_name: "bob"}
    with ringrouter.Client(addr, alice_name) as alice, ringrouter.Client(addr, bob_name) as bob:
        threads = [
            threading.Thread(target=receive_loop, args=(alice, "alice", log, names)),
            threading.Thread(target=receive_loop, args=(bob, "bob", log, names)),
        ]
        for t in threads:
            t.start()
        # Contacts: alice asks, bob accepts (each is told, and sees the other's presence).
        alice.contact_request(bob_name)
        bob.contact_accept(alice_name)
        print(f"bob's contacts: {[names.get(u, u) for u in bob.contacts().accepted]}", flush=True)
        for who, text in script:
            sender, to = (alice, bob_name) if who == "alice" else (bob, alice_name)
            sender.send(to, b"typing", ephemeral=True)
            sender.send(to, text.encode(), wait=True)  # raises if the router refuses it
            # Wait for the line to arrive before the next one, like people do.
            deadline = time.monotonic() + 5
            while not any(l.endswith(": " + text) for l in log) and time.monotonic() < deadline:
                time.sleep(0.01)
        # Presence: contacts hear of changes (at most one a second per user).
        time.sleep(1.1)
        alice.set_presence("away", "lunch")
        p = bob.presence(alice_name)
        print(f"bob asks: alice is {p.status} ({p.text})", flush=True)
        time.sleep(0.2)
    # Leaving the `with` closed both clients, which ends both receive loops.
    for t in threads:
        t.join(5)
    ok = len(log) == len(script)
    print(f"{len(log)} of {len(script)} lines delivered" + ("" if ok else " (incomplete)"))
    return 0 if ok else 1


def command(me: ringrouter.Client, line: str) -> None:
    """Runs one "/command arg" line."""
    cmd, _, arg = line[1:].partition(" ")
    if cmd == "accept":
        me.contact_accept(arg)
    elif cmd == "block":
        me.block(arg)
    elif cmd == "contacts":
        print(me.contacts())
    elif cmd == "away":
        me.set_presence("away", arg)
    elif cmd == "online":
        me.set_presence("online", arg)
    elif cmd == "presence":
        print(me.presence(arg))
    else:
        print(f"unknown command /{cmd}")


def interactive(addr: str, user: str, to: str) -> int:
    with ringrouter.Client(addr, user) as me:
        t = threading.Thread(target=receive_loop, args=(me, user, []), daemon=True)
        t.start()
        print(f"logged in as {me.user}; lines you type go to {to} (Ctrl-D to quit)")
        if to not in me.contacts().accepted + me.contacts().outgoing:
            try:
                me.contact_request(to)
            except ringrouter.RouterError as e:
                print(f"contact request not sent: {e.code} {e.reason}")
        for line in sys.stdin:
            line = line.rstrip("\n")
            if not line:
                continue
            try:
                if line.startswith("/"):
                    command(me, line)
                    continue
                me.send(to, b"typing", ephemeral=True)
                me.send(to, line.encode(), wait=True)
            except ringrouter.RouterError as e:
                print(f"not delivered: {e.code} {e.reason}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description="Two users chatting through a ringrouter.")
    p.add_argument("--addr", default="127.0.0.1:7878", help="router address (default %(default)s)")
    p.add_argument("--user", help="interactive mode: log in as this user")
    p.add_argument("--to", help="interactive mode: chat with this user")
    args = p.parse_args()
    if args.user or args.to:
        if not (args.user and args.to):
            p.error("interactive mode needs both --user and --to")
        return interactive(args.addr, args.user, args.to)
    return demo(args.addr)


if __name__ == "__main__":
    sys.exit(main())
