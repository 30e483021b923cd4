"""D devices of rv get M messages each (not acked), all cut; then ONE device logs in again:
how many Delivers does it get (M if deduped, D*M if each device's copy is queued)?
usage: resume_dup.py TCP D M"""
import sys, os, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, D, M = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
devs = [Conn(tcp, "rv", device=f"d{i}", resume=True, auto_ack=False) for i in range(D)]
a = Conn(tcp, "att")
for j in range(M): a.send_frame(2, {2: "rv", 4: b"m%d" % j})
for c in devs: print("device got", c.drain(0.5), end="; ")
toks = [c.login_result[10][0] for c in devs]
for c in devs: c.close()
time.sleep(1)
for k, label in ((0, "with token"), (1, "fresh device name")):
    c = Conn(tcp, "rv", device="d0" if k == 0 else "new", resume=True, token=toks[0] if k == 0 else None, auto_ack=False)
    ids = {}
    n = 0
    while True:
        r = c.recv(1.0)
        if r is None: break
        if r[0] == "deliver": n += 1; p = r[1].get(4, [b""])[0]; ids[p] = ids.get(p, 0) + 1
    print(f"\n{label}: resumed={c.login_result.get(11,[0])[0]} delivers={n} distinct payloads={len(ids)} max copies={max(ids.values()) if ids else 0}")
    c.close(); time.sleep(1)
