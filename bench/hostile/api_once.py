"""A Join (password room) keeps room R busy while NC connections each POST one
/api/v1/publish to it, 3 rounds; prints the store queue peak per shard.
usage: api_once.py TCP HTTP KEYFILE M NC"""
import sys, os, time, socket, json, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, keyf, M, NC = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
members = names_on("am", 0, M); login_all(tcp, members)
room = names_on("aroom", 0, 1)[0]
o = Conn(tcp, names_on("aowner", 0, 1)[0]); o.send_frame(10, {1: 1, 2: room, 3: "pw", 4: members}); print(o.wait("room_result", 60).get(2))
key = open(keyf).read().strip()
body = json.dumps({"to_room": room, "payload": "hello"}).encode()
host, port = http.rsplit(":", 1)
req = (f"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
xs = [socket.create_connection((host, int(port))) for _ in range(NC)]
time.sleep(0.5)
j = Conn(tcp, names_on("ajoiner", 1, 1)[0])
print("peak0", gauges(http))
for rnd in range(3):
    j.send_frame(11, {1: 1, 2: room, 3: "pw"})
    time.sleep(0.003)
    t0 = time.time()
    for x in xs: x.sendall(req)
    print("sent in", (time.time()-t0)*1000, "ms")
    for x in xs: x.settimeout(10); x.recv(4096)
    print("answers in", (time.time()-t0)*1000, "ms", "join:", j.wait("room_result").get(2))
    j.send_frame(12, {1: 2, 2: room}); j.wait("room_result")
    print("peak", gauges(http))
