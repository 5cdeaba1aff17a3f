"""A bridge on mautrix-python's AppService, driven line by line over stdin by
tests/tests/appservice_mautrix.rs; everything it sees goes to stdout as JSON lines.

Usage: bridge.py HOMESERVER_URL DOMAIN AS_PORT AS_TOKEN HS_TOKEN STATE_FILE
Commands (one per line): ping | register LOCALPART | join LOCALPART ROOM |
send LOCALPART ROOM TEXT... | quit
"""

import asyncio
import json
import logging
import sys

from mautrix.appservice import AppService
from mautrix.appservice.state_store import FileASStateStore
from mautrix.types import EventType, RoomCreatePreset


def out(obj):
    # serialize() leaves some of mautrix's own types (a member's content) inside.
    default = lambda o: o.serialize() if hasattr(o, "serialize") else str(o)
    print(json.dumps(obj, default=default), flush=True)


async def main():
    hs, domain, port, as_token, hs_token, state_file = sys.argv[1:7]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    appserv = None

    async def query_alias(alias):
        # A bridged channel comes into existence when someone looks it up.
        out({"alias_query": alias})
        local = alias[1:].split(":", 1)[0]
        if not local.startswith("irc_") or local.startswith("irc_missing"):
            return None
        room_id = await appserv.intent.create_room(
            alias_localpart=local, preset=RoomCreatePreset.PUBLIC, name=f"Bridged {local}"
        )
        out({"alias_created": alias, "room_id": room_id})
        return {}

    appserv = AppService(
        server=hs,
        domain=domain,
        as_token=as_token,
        hs_token=hs_token,
        bot_localpart="ircbot",
        id="irc",
        query_alias=query_alias,
        ephemeral_events=True,
        state_store=FileASStateStore(path=state_file, binary=False),
        log=logging.getLogger("bridge"),
    )

    @appserv.matrix_event_handler
    async def on_event(event):
        kind = "ephemeral" if event.type.is_ephemeral else "event"
        out({kind: event.serialize()})

    await appserv.start(host="127.0.0.1", port=int(port))
    out({"ready": True})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        cmd, *args = line.split(" ")
        try:
            if cmd == "ping":
                out({"ping": await appserv.ping_self("from-mautrix")})
            elif cmd == "register":
                intent = appserv.intent.user(f"@{args[0]}:{domain}")
                await intent.ensure_registered()
                out({"registered": intent.mxid})
            elif cmd == "join":
                intent = appserv.intent.user(f"@{args[0]}:{domain}")
                out({"joined": await intent.join_room(args[1])})
            elif cmd == "send":
                intent = appserv.intent.user(f"@{args[0]}:{domain}")
                out({"sent": await intent.send_text(args[1], " ".join(args[2:]))})
            else:
                out({"error": f"unknown command {cmd}"})
        except Exception as e:  # the test reads the failure
            out({"error": f"{cmd}: {type(e).__name__}: {e}"})
    await appserv.stop()


asyncio.run(main())
