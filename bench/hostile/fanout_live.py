"""One sender fans big ephemeral DMs out to K devices of one user that read as fast as they
can, over TRANSPORT json (ringrouter.v1.json WS) | bin (ringrouter.v1 WS) | tcp.
usage: fanout_json.py TCP HTTP PID K SECONDS TRANSPORT [PAYLOAD_BYTES] [SHARD]"""
import sys, os, time, socket, threading, base64, struct, json, select
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
from shardnames import names_on, home
import transports
from transports import ws_frame, cf
tcp, http, pid, K, secs, tr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
P = int(sys.argv[7]) if len(sys.argv) > 7 else 1000000
SH = int(sys.argv[8]) if len(sys.argv) > 8 else 0
victim = names_on("fjv", SH, 1)[0]; sender = names_on("fjs", 1 - SH, 1)[0]
hh, hp = http.rsplit(":", 1)
def ws_open(proto):
    return transports.ws_open(http, proto)
devs = []
for i in range(K):
    if tr == "json":
        s, rest = ws_open("ringrouter.v1.json")
        s.sendall(ws_frame(json.dumps({"login": {"user": victim, "device": f"d{i}"}}).encode(), 1))
    elif tr == "bin":
        s, rest = ws_open("ringrouter.v1")
        s.sendall(ws_frame(cf(1, {2: victim, 5: f"d{i}"}), 2))
    else:
        h, p = tcp.rsplit(":", 1); s = socket.create_connection((h, int(p))); s.sendall(frame(1, {2: victim, 5: f"d{i}"}))
    devs.append(s)
time.sleep(1)
got = [0]; stop = [False]
def reader(ss):
    while not stop[0]:
        r, _, _ = select.select(ss, [], [], 0.5)
        for s in r:
            try:
                d = s.recv(1 << 22); got[0] += len(d)
            except Exception: pass
for j in range(4):
    threading.Thread(target=reader, args=(devs[j::4],), daemon=True).start()
snd = Conn(tcp, sender)
payload = os.urandom(P)
msg = frame(2, {2: victim, 4: payload, 7: True})
import subprocess
PSH = int(sys.argv[9]) if len(sys.argv) > 9 else SH
probe = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py"), tcp, str(PSH), str(secs + 8), "fj"], stdout=subprocess.PIPE, text=True)
time.sleep(6)   # probe baseline (first 5 s window)
status("before", pid, http, ("sessions", "pending_bytes"), with_cpu=True)
t0 = time.time(); n = 0
def drain():
    while not stop[0]:
        try: snd.recv(0.5)
        except Exception: return
threading.Thread(target=drain, daemon=True).start()
while time.time() - t0 < secs:
    snd.raw(msg); n += 1
stop[0] = True
print(f"sent {n} msgs of {P} B in {secs}s to {K} {tr} devices; devices read {got[0]/2**20:.0f} MiB", flush=True)
status("after", pid, http, ("sessions", "pending_bytes"), with_cpu=True)
out, _ = probe.communicate(); print(out, flush=True)
