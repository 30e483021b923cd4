"""Control for api_room.py: the owner (a member) Sends to bigroom over TCP in a loop.
usage: room_send.py TCP HTTP PID SECONDS"""
import sys, os, time, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, http, pid, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
o = Conn(tcp, "owner", device="snd"); o.s.setblocking(True)
blk = b"".join(frame(2, {3: "bigroom", 4: b"hello"}) for _ in range(20))
stop = False; sent = [0]
def att():
    while not stop:
        try: o.s.sendall(blk); sent[0] += 20
        except Exception as e: print("att", e); return
def rd():
    while not stop:
        try: o.s.settimeout(0.5); o.s.recv(1 << 20)
        except Exception: pass
threading.Thread(target=att, daemon=True).start(); threading.Thread(target=rd, daemon=True).start()
c0 = cpu(pid); t0 = time.time(); s0 = 0
while time.time() - t0 < secs:
    time.sleep(5); c = cpu(pid)
    print(f"t={time.time()-t0:.0f} sends/s={(sent[0]-s0)/5:.0f} cpu={c-c0:.1f}s rss={rss(pid)/1024:.0f}MiB {metrics(http, ('store_queue_requests','offline_stored_total','store_bulk_waiting'))}", flush=True); c0 = c; s0 = sent[0]
stop = True
