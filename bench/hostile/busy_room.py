"""Room R (homed on shard 0, M offline members homed on 0), owner on shard OWNER_SHARD
pipelining Sends to R; a second account keeps R busy with JoinRoom/LeaveRoom (password room:
each join checks the password on the hashing pool) in a loop. Sends that arrive while R is busy
are queued on the room and all fanned out by pump_room once it is not.
usage: busy_room.py TCP HTTP M SECS [OWNER_SHARD] [PW] [API_KEYFILE]"""
import sys, threading, time, select, socket, json, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, M, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
osh = int(sys.argv[5]) if len(sys.argv) > 5 else 0
pw = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] != "-" else ""
keyf = sys.argv[7] if len(sys.argv) > 7 else None
S = 0
members = names_on("bm", S, M); login_all(tcp, members)
owner = names_on("bowner", osh, 1)[0]; room = names_on("broom", S, 1)[0]
o = Conn(tcp, owner, device="d1")
cr = {1: 1, 2: room, 4: members}
if pw: cr[3] = pw
o.send_frame(10, cr); r = o.wait("room_result", 120)
print("room", room, r.get(2), r.get(3), flush=True)
j = Conn(tcp, names_on("bjoiner", 1, 1)[0])
jf = {1: 1, 2: room}
if pw: jf[3] = pw
jblk = (frame(11, jf) + frame(12, {1: 2, 2: room})) * 8
print("peak before", gauges(http), flush=True)
stop = False; sent = [0]
MAXS = int(os.environ.get('MAXSENDS', '1000000000'))
def joiner():
    j.s.setblocking(True)
    keep_reading(j.s, lambda: stop)
    while not stop:
        j.s.sendall(jblk)
if not os.environ.get('NOJOIN'): threading.Thread(target=joiner, daemon=True).start()
if keyf:
    key = open(keyf).read().strip()
    body = json.dumps({"to_room": room, "payload": "hello"}).encode()
    host, port = http.rsplit(":", 1)
    req = (f"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    APIPIPE = int(os.environ.get('APIPIPE','20')); req = req * APIPIPE
    NC = int(os.environ.get("APICONNS", "50"))
    xs = [socket.create_connection((host, int(port))) for _ in range(NC)]
    def api(x):
        keep_reading(x, lambda: stop)
        while not stop and sent[0] < MAXS:
            x.sendall(req); sent[0] += APIPIPE
    for x in xs: threading.Thread(target=api, args=(x,), daemon=True).start()
else:
    blk = b"".join(frame(2, {3: room, 4: b"hello"}) for _ in range(20))
    write_loop(o.s, blk, 20, sent, lambda: stop, MAXS)
watch(http, secs, lambda: f"sent={sent[0]}")
stop = True
