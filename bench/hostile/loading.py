"""phase setup: room of M offline members on shard 0; phase send: owner pipelines K sends once."""
import os, sys, time, select, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, phase, M, K = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
room = names_on("lroom", 0, 1)[0]; owner = names_on("lowner", 0, 1)[0]
if phase == "setup":
    members = names_on("lm", 0, M); login_all(tcp, members)
    o = Conn(tcp, owner); o.send_frame(10, {1: 1, 2: room, 4: members}); print("create", o.wait("room_result", 60).get(2))
else:
    o = Conn(tcp, owner)
    print("peak0", gauges(http))
    o.s.sendall(b"".join(frame(2, {3: room, 4: b"hello"}) for _ in range(K)))
    for i in range(8):
        time.sleep(1); print(f"t={i+1} peak", gauges(http), "now", gauges(http, "store_queue_requests"), flush=True)
