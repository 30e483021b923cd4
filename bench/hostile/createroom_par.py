"""PAR creators (fresh accounts) each send one CreateRoom with the same M members at once;
an honest user times logins and ListRooms meanwhile. usage: createroom_par.py TCP PID M PAR OFF"""
import sys, os, time, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, pid, M, PAR, OFF = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
members = [f"m{i:05d}" for i in range(M)]
lat = []; lr = []; stop = False
hon = Conn(tcp, "honestL2")
def probe():
    i = 0
    while not stop:
        i += 1; t = time.time()
        try: c = Conn(tcp, "honestL", device=f"d{i%3}"); lat.append((time.time()-t)*1000); c.close()
        except Exception: lat.append(99999)
        t = time.time()
        hon.send_frame(16, {1: i}); hon.wait("room_result", 30); lr.append((time.time()-t)*1000)
        time.sleep(0.005)
cs = [Conn(tcp, f"crp{OFF}_{r}") for r in range(PAR)]
threading.Thread(target=probe, daemon=True).start()
time.sleep(1); lat.clear(); lr.clear()
t0 = time.time()
for r, c in enumerate(cs): c.send_frame(10, {1: 1, 2: f"proom{OFF}_{r}", 4: members})
st = []
for c in cs:
    res = c.wait("room_result", 120); st.append(res.get(2, [0])[0])
dt = time.time() - t0
time.sleep(0.2); stop = True
l = sorted(lat); m = sorted(lr)
print(f"{PAR} CreateRooms of {M} members done in {dt*1000:.0f}ms statuses={set(st)} | honest logins n={len(l)} p50={l[len(l)//2]:.0f} max={l[-1]:.0f}ms | ListRooms n={len(m)} p50={m[len(m)//2]:.0f} max={m[-1]:.0f}ms | rss={rss(pid)/1024:.0f}MiB", flush=True)
