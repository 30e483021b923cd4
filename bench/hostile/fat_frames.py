"""K connections homed on SHARD send, in a loop, frames that are cheap on the wire but costly to
decode: CreateRoom with M empty-named members (~2 B each, within --max-frame-bytes), answered
BAD_REQUEST (too many members); they read their answers. TRANSPORT tcp | bin (WS) | json (WS).
usage: fat_frames.py TCP HTTP PID K SECONDS TRANSPORT [M] [SHARD]
VALID=1: distinct valid member names (m0, m1, ...) instead of empty ones.
SEND_FIRST=1 (tcp): each frame begins with an empty Send."""
import sys, os, time, socket, threading, base64, json, select, subprocess
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
from shardnames import names_on
import transports
from transports import ws_frame, cf
tcp, http, pid, K, secs, tr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
M = int(sys.argv[7]) if len(sys.argv) > 7 else 500000
SH = int(sys.argv[8]) if len(sys.argv) > 8 else 0
hh, hp = http.rsplit(":", 1)
def ws_open(proto):
    return transports.ws_open(http, proto)[0]
names = [f"m{i}" for i in range(M)] if os.environ.get("VALID") else [""] * M
body = msg({1: 1, 2: "fatroom", 4: names})
print(f"ClientFrame bytes {len(body)+4}", flush=True)
if tr == "json":
    blob = ws_frame(json.dumps({"createRoom": {"requestId": "1", "name": "fatroom", "members": names}}, separators=(",", ":")).encode(), 1)
elif tr == "bin":
    blob = ws_frame(cf(10, body), 2)
else:
    blob = frame(10, body)
    if os.environ.get("SEND_FIRST"):
        # An empty Send first: prost decodes the frame as the CreateRoom (the last kind).
        m = b"\x12\x00" + field(10, body); blob = varint(len(m)) + m
print(f"wire bytes per frame {len(blob)}", flush=True)
users = names_on("fat", SH, K)
conns = []
for u in users:
    if tr == "json":
        s = ws_open("ringrouter.v1.json"); s.sendall(ws_frame(json.dumps({"login": {"user": u}}).encode(), 1))
    elif tr == "bin":
        s = ws_open("ringrouter.v1"); s.sendall(ws_frame(cf(1, {2: u}), 2))
    else:
        h, p = tcp.rsplit(":", 1); s = socket.create_connection((h, int(p))); s.sendall(frame(1, {2: u}))
    conns.append(s)
stop = [False]; sent = [0]; closed = [0]
def run(s):
    threading.Thread(target=lambda: [s.recv(1 << 20) for _ in iter(int, 1)] if False else None)
    def rd():
        while not stop[0]:
            try:
                d = s.recv(1 << 20)
                if not d: closed[0] += 1; return
            except Exception: return
    threading.Thread(target=rd, daemon=True).start()
    while not stop[0]:
        try: s.sendall(blob); sent[0] += 1
        except Exception as e: print("sender ended", e, flush=True); return
PSH = int(sys.argv[9]) if len(sys.argv) > 9 else SH
probe = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py"), tcp, str(PSH), str(secs + 8), "ff"], stdout=subprocess.PIPE, text=True)
time.sleep(6)
status("before", pid, http, ("sessions",), with_cpu=True)
for s in conns: threading.Thread(target=run, args=(s,), daemon=True).start()
time.sleep(secs); stop[0] = True
print(f"sent {sent[0]} frames from {K} {tr} conns in {secs}s; closed by router: {closed[0]}", flush=True)
status("after", pid, http, ("sessions",), with_cpu=True)
out, _ = probe.communicate(); print(out, flush=True)
