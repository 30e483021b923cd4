"""Others keep shard 0's store busy (run dm_flood.py beside it) while a backend publishes
through the HTTP API, one request at a time, to a room of M offline members homed on
shard 0: prints each publish's HTTP status and how long it took (503 past
--http-api-timeout).
usage: api_starve.py TCP HTTP KEYFILE M K
TO_USER=1: each publish goes to one offline user homed on shard 0 instead."""
import os, sys, time, socket, json
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, keyf, M, K = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
members = names_on("pm", 0, M); login_all(tcp, members)
room = names_on("proom", 0, 1)[0]
o = Conn(tcp, names_on("powner", 0, 1)[0])
o.send_frame(10, {1: 1, 2: room, 4: members}); print("room", o.wait("room_result", 120).get(2), flush=True)
key = open(keyf).read().strip()
to = {"to_user": members[0]} if os.environ.get("TO_USER") else {"to_room": room}
body = json.dumps({**to, "payload": "big"}).encode()
host, port = http.rsplit(":", 1)
req = (f"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
time.sleep(float(os.environ.get("DELAY", "8")))
for k in range(K):
    x = socket.create_connection((host, int(port))); x.settimeout(30)
    t0 = time.time(); x.sendall(req)
    try: status = x.recv(4096).split(b"\r\n", 1)[0].decode()
    except socket.timeout: status = "timeout"
    x.close()
    print(f"publish {k}: {status} after {(time.time()-t0)*1000:.0f} ms {gauges(http, 'store_queue_requests')}", flush=True)
