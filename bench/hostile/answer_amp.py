"""Amplification probe for non-big answers. usage:
  amp.py TCP PID HTTP setup NUSERS
  amp.py TCP PID HTTP MODE SESS NREQ [USERS] [HOLD_S]
MODE: listrooms listcontacts presence_self presence_forbid listusers roominfo history
Each session: SO_RCVBUF 4096, pipelines NREQ requests in one write, never reads.
  read pid tcp http dir < <(bench/hostile/start.sh amp); python3 bench/hostile/answer_amp.py $tcp $pid $http setup 5000
  python3 bench/hostile/answer_amp.py $tcp $pid $http listrooms 64 200; kill $pid
Before the twenty-third pass, 64 sessions held 0.4-0.8 GB of ListRooms / ListContacts /
ListUsers answers (~8 MiB each); now one answer each."""
import sys, os, time, socket
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, pid, http, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
M = ("sessions","pending_bytes","slow_consumer_closes_total","store_queue_bytes")
PAD = "x"*58
def U(i): return f"u{i:05d}{PAD}"          # 64 bytes
A = "amp" + "a"*61                           # 64 bytes
def st(tag): status(tag, pid, http, M)

def login_many(names, batch=200):
    host, port = tcp.rsplit(":",1)
    for b in range(0, len(names), batch):
        ss = []
        for n in names[b:b+batch]:
            s = socket.create_connection((host, int(port))); s.sendall(frame(1, {2: n})); ss.append(s)
        for s in ss:
            s.settimeout(10); s.recv(4096); s.close()

if mode == "setup":
    N = int(sys.argv[5])
    t0 = time.time(); login_many([U(i) for i in range(N)]); print("logged in", N, "users", time.time()-t0, flush=True)
    a = Conn(tcp, A)
    # 1000 rooms with 64-byte names
    for i in range(1000):
        a.send_frame(10, {1: i+1, 2: f"r{i:04d}" + "R"*59})
    ok = 0
    for i in range(1000):
        r = a.wait("room_result", 30); ok += r.get(2,[0])[0] == 1
    print("rooms created ok", ok, flush=True)
    # block N users (up to 5000)
    n = min(N, 5000)
    for i in range(n): a.send_frame(20, {1: i+1, 2: U(i), 3: 5})
    ok = 0
    for i in range(n):
        r = a.wait("contact_result", 30); ok += r.get(2,[0])[0] == 1
    print("blocked ok", ok, flush=True)
    # presence text 256 B
    a.send_frame(25, {1: 1, 2: 1, 3: "p"*256}); print("setpresence", a.wait("presence_result"))
    login_many(["peer"])
    for i in range(600):
        a.send_frame(2, {1: i+1, 2: "peer", 4: os.urandom(2000), 5: True})
        if i % 64 == 63: a.wait("send_result")
    a.drain(0.5)
    a.close()
    # big room: owner u00000, members A + 2999 users
    o = Conn(tcp, "owner")
    mem = [A] + [U(i) for i in range(1, min(N, 3000))]
    o.send_frame(10, {1: 1, 2: "big" + "B"*61, 4: mem})
    r = o.wait("room_result", 60); print("big room", r.get(2), r.get(3)); o.close()
    st("setup")
    sys.exit()

SESS, NREQ = int(sys.argv[5]), int(sys.argv[6])
USERS = int(sys.argv[7]) if len(sys.argv) > 7 else 1
HOLD = float(sys.argv[8]) if len(sys.argv) > 8 else 3.0
def req(i, user):
    if mode == "listrooms": return frame(16, {1: i})
    if mode == "listcontacts": return frame(21, {1: i})
    if mode == "presence_self": return frame(26, {1: i, 2: user})
    if mode == "presence_forbid": return frame(26, {1: i, 2: "z"})
    if mode == "listusers": return frame(32, {1: i, 2: "*"})
    if mode == "roominfo": return frame(17, {1: i, 2: "big" + "B"*61})
    if mode == "history": return frame(40, {1: i, 2: "peer", 5: 500})
    if mode == "listconv": return frame(41, {1: i, 3: 0, 2: 500})
def user_of(j):
    return A if USERS == 1 else (A if j % USERS == 0 else U(j % USERS))
# size of one answer
c = Conn(tcp, user_of(0), device="probe")
c.raw(req(1, user_of(0)))
t0=time.time()
while True:
    l_before = len(c.buf); r = c.recv(10)
    if r is None: print("no answer"); break
    if r[0] not in ("presence","room_event","contact_event","deliver"): break
c.s.setblocking(True)
one = frame(1, b"")  # placeholder
print("one answer kind", r[0], "status", r[1].get(2), "fields", {k: len(v) for k, v in r[1].items()}, flush=True)
# measure encoded size: re-request and read raw bytes
c.raw(req(2, user_of(0))); time.sleep(0.5)
raw = b""; c.s.settimeout(1)
try:
    while True:
        d = c.s.recv(1<<20)
        if not d: break
        raw += d
except socket.timeout: pass
print("one answer bytes ~", len(raw), flush=True); c.close()
st("before")
payload_bytes = 0; socks = []
for j in range(SESS):
    u = user_of(j)
    try:
        s = Conn(tcp, u, device=f"d{j}")
    except Exception as e:
        print("login fail", j, e); continue
    s.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    socks.append((s, u))
for s, u in socks:
    b = b"".join(req(i+1, u) for i in range(NREQ)); payload_bytes += len(b)
    s.raw(b)
socks = [s for s, u in socks]
print(f"sessions={len(socks)} request bytes per session={payload_bytes//max(1,len(socks))} total={payload_bytes}", flush=True)
t = 0
while t < HOLD:
    time.sleep(0.5); t += 0.5; st(f"+{t:.1f}s")
for s in socks: s.close()
time.sleep(2); st("after close")
