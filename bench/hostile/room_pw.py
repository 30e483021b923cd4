"""Room-password hashing flood: NSESS sessions of NJOINERS accounts each keep 16
wrong-password JoinRooms in flight at NROOMS password rooms, while an honest user logs in
with its password every 100 ms; prints the honest logins' p50/max and count every 5 s,
and the joins' answers by status (5 FORBIDDEN: checked, 9 RATE_LIMITED: refused unhashed).
Before --max-failed-room-joins-per-user / -per-room and the room passwords' quarter of the
hashing pool, the guesses kept the Argon2 pool full: honest logins p50 17-28 ms -> 0.9-1.1 s
(logins per 5 s 43 -> 4-6), some refused RATE_LIMITED "too many password operations in
progress".
usage: room_pw.py TCP SECS MODE [NROOMS] [NSESS] [NJOINERS]
  MODE accounts: router runs --auth accounts (accounts registered here)
  MODE open:     router runs --auth open (measures others' pings / ListRooms only)
  read pid tcp http dir < <(bench/hostile/start.sh rpw --auth accounts)
  python3 bench/hostile/room_pw.py $tcp 20 accounts 64 80 80; kill $pid
(the joiners' accounts are registered from 127.0.x.y source addresses: Linux loopback)
"""
import sys, os, time, threading, socket
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *

tcp, secs, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
nrooms = int(sys.argv[4]) if len(sys.argv) > 4 else 64
nsess = int(sys.argv[5]) if len(sys.argv) > 5 else 8
acc = mode == "accounts"
tag = str(int(time.time()) % 100000)
PW = "correct-horse-battery"

def register(users, src=None):
    c = Conn(tcp)
    if src:
        c.s.close(); h, p = tcp.rsplit(":", 1)
        c.s = socket.create_connection((h, int(p)), source_address=(src, 0))
    for i, u in enumerate(users):
        c.send_frame(30, {1: i + 1, 2: u, 3: PW})
        r = c.wait("account_result")
        st = r.get(2, [0])[0]
        if st != 1: print("register", u, st, r.get(3))
    c.close()

owner, joiner, honest = f"own{tag}", f"join{tag}", f"hon{tag}"
NJ = int(sys.argv[6]) if len(sys.argv) > 6 else 1
joiners = [f"join{tag}n{i}" for i in range(NJ)]
if acc:
    register([owner, honest])
    for i in range(0, NJ, 3):
        register(joiners[i:i+3], src=f"127.0.{1 + i // 90}.{2 + (i // 3) % 30}")
        time.sleep(0.16)

def login(u, dev=None):
    return Conn(tcp, u, device=dev, password=PW if acc else None)

def honest_logins(stop, out):
    while not stop[0]:
        t0 = time.time()
        try:
            c = login(honest, "h")
            st = c.login_result.get(2, [0])[0]
            out.append(((time.time() - t0) * 1000, st)); c.close()
        except Exception as e:
            out.append((99999, -1))
        time.sleep(0.1)

def summary(l):
    if not l: return "none"
    ok = sorted(x for x, s in l if s == 1)
    rl = sum(1 for _, s in l if s == 9 or s == 10)
    other = sum(1 for _, s in l if s not in (1, 9, 10))
    o = f"ok={len(ok)} refused(status 9/10)={rl} other={other}"
    if ok: o += f" ok_p50={ok[len(ok)//2]:.1f}ms ok_max={ok[-1]:.1f}ms"
    return o

# baseline
probe = Probe(tcp, f"pp{tag}", "ping") if not acc else None
lat = []; stop = [False]
if acc:
    threading.Thread(target=honest_logins, args=(stop, lat), daemon=True).start()
time.sleep(5)
print("[baseline 5s]", summary(lat) if acc else probe.take(), flush=True); lat.clear()
stop[0] = True; time.sleep(0.5)

# owner makes password rooms (each one Argon2 hash)
o = login(owner, "o")
for i in range(nrooms):
    o.send_frame(10, {1: i + 1, 2: f"pwroom{tag}x{i}", 3: PW})
got = 0
while got < nrooms:
    r = o.wait("room_result", 60); got += 1
print(f"created {nrooms} password rooms", flush=True)

# joiners: NSESS sessions, each keeps 16 wrong-password JoinRooms in flight
count = [0, {}]
def joinloop(k, stop):
    c = login(joiners[k % NJ], f"j{k}")
    rid = 0
    def send():
        nonlocal rid
        rid += 1
        c.send_frame(11, {1: rid, 2: f"pwroom{tag}x{(rid * 7 + k) % nrooms}", 3: "wrong"})
    for _ in range(16): send()
    while not stop[0]:
        try: r = c.recv(5)
        except Exception: return
        if r is None: continue
        if r[0] == "room_result":
            st = r[1].get(2, [0])[0]; count[0] += 1
            count[1][st] = count[1].get(st, 0) + 1
            send()
stop = [False]
for k in range(nsess):
    threading.Thread(target=joinloop, args=(k, stop), daemon=True).start()
time.sleep(1)
stop2 = [False]
if acc:
    threading.Thread(target=honest_logins, args=(stop2, lat), daemon=True).start()
t0 = time.time()
while time.time() - t0 < secs:
    time.sleep(5)
    print(f"[attack t={time.time()-t0:.0f}] joins answered={count[0]} by status={dict(count[1])} |",
          summary(lat) if acc else probe.take(), flush=True)
    lat.clear(); count[0] = 0; count[1].clear()
stop[0] = True; stop2[0] = True
time.sleep(3)
if acc:
    lat.clear(); stop3 = [False]
    threading.Thread(target=honest_logins, args=(stop3, lat), daemon=True).start()
    time.sleep(5); stop3[0] = True
print("[after 5s]", summary(lat) if acc else probe.take(), flush=True)
