"""Makes room NAME with M members of 64-byte names (each logged in once). usage: bigroom_setup.py TCP NAME M"""
import sys, os, time, socket
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, name, M = sys.argv[1], sys.argv[2], int(sys.argv[3])
host, port = tcp.rsplit(":", 1)
names = [("u%05d" % i).ljust(64, "x") for i in range(M)]
t0 = time.time()
B = 200
for k in range(0, M, B):
    ss = []
    for n in names[k:k+B]:
        s = socket.create_connection((host, int(port))); s.sendall(frame(1, {2: n})); ss.append(s)
    for s in ss:
        s.settimeout(10); s.recv(100); s.close()
print(f"{M} users logged in once in {time.time()-t0:.1f}s", flush=True)
o = Conn(tcp, "owner")
o.send_frame(10, {1: 1, 2: name, 4: names})
r = o.wait("room_result", 60)
print("create:", {k: v for k, v in r.items() if k != 6}, flush=True)
