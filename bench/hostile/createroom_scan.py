"""CreateRoom with M initial members who are each in many rooms (check_members scans each
member's memberships). R creators each create one room with the same M members; every
STEP rooms, one timed CreateRoom while an honest user times ListRooms / logins.
usage: createroom_scan.py TCP HTTP PID M R STEP"""
import sys, os, time, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, http, pid, M, R, STEP = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
members = [f"m{i:05d}" for i in range(M)]
t0 = time.time()
OFF = int(os.environ.get("OFF", "0"))
if not OFF:
  for m in members:
    c = Conn(tcp, m); c.close()
print(f"{M} members made in {time.time()-t0:.1f}s", flush=True)
time.sleep(1)
lat = []; stop = False
hon = Conn(tcp, "honestL")
def probe():
    i = 0
    while not stop:
        i += 1; t = time.time()
        try:
            if os.environ.get("PK") == "lr":
                hon.send_frame(16, {1: i}); hon.wait("room_result", 30); lat.append((time.time()-t)*1000)
            else:
                c = Conn(tcp, "honestL", device=f"d{i%3}"); lat.append((time.time()-t)*1000); c.close()
        except Exception: lat.append(99999)
        time.sleep(0.005)
threading.Thread(target=probe, daemon=True).start()
def cr(r):
    c = Conn(tcp, f"cr{r}")
    t = time.time()
    c.send_frame(10, {1: 1, 2: f"room{r}", 4: members})
    res = c.wait("room_result", 60)
    dt = (time.time()-t)*1000; c.close()
    return dt, res.get(2, [0])[0], res.get(3, [b""])[0][:80]
t0 = time.time()
for r in range(OFF, OFF + R):
    if (r - OFF) % STEP == 0:
        lat.clear()
        dt, st, reason = cr(r)
        time.sleep(0.3)
        l = sorted(lat)
        print(f"rooms={r} (memberships/member={r}) CreateRoom {dt:.0f}ms status={st} {reason} | honest logins n={len(l)} max={l[-1] if l else 0:.0f}ms p50={l[len(l)//2] if l else 0:.0f}ms | rss={rss(pid)/1024:.0f}MiB t={time.time()-t0:.0f}s", flush=True)
    else:
        dt, st, reason = cr(r)
        if st != 0: print("status", st, reason, flush=True)
stop = True
print(metrics(http, ("store_queue_requests", "rooms_loaded", "room_members_loaded")))
