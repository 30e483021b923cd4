"""Helpers of the room-queue probes (busy_room.py, quota_park.py, loading.py, api_once.py):
names homed on a shard (the router's home_shard, 2 shards), logins in bulk, per-shard gauges."""
import sys, os, time, socket, select, threading, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *

def home(name, n=2):
    if isinstance(name, str): name = name.encode()
    M = (1 << 64) - 1
    h = 0xcbf29ce484222325 ^ 0x9e3779b97f4a7c15
    for b in name:
        h ^= b; h = (h * 0x00000100000001b3) & M
    h ^= h >> 33; h = (h * 0xff51afd7ed558ccd) & M; h ^= h >> 33
    return h % n

def names_on(prefix, shard, count, n=2, start=0):
    out = []; i = start
    while len(out) < count:
        nm = f"{prefix}{i:06d}"; i += 1
        if home(nm, n) == shard: out.append(nm)
    return out

def login_all(tcp, names, B=200):
    host, port = tcp.rsplit(":", 1)
    for k in range(0, len(names), B):
        ss = []
        for n in names[k:k+B]:
            s = socket.create_connection((host, int(port))); s.sendall(frame(1, {2: n})); ss.append(s)
        for s in ss:
            s.settimeout(10)
            try: s.recv(100)
            except Exception: pass
            s.close()

def gauges(http, name="store_queue_requests_peak"):
    try: t = urllib.request.urlopen(f"http://{http}/metrics", timeout=3).read().decode()
    except Exception as e: return "metrics-timeout"
    out = {}
    for l in t.splitlines():
        if l.startswith(f"ringrouter_shard_{name}{{"):
            sh = l.split('shard="')[1].split('"')[0]; out[int(sh)] = float(l.split()[-1])
    return out

def keep_reading(sock, stopped):
    """Reads and drops what the router sends on `sock`, in a thread, until stopped()."""
    def rd():
        while not stopped():
            try:
                r, _, _ = select.select([sock], [], [], 0.5)
                if r: sock.recv(1 << 20)
            except Exception: pass
    threading.Thread(target=rd, daemon=True).start()

def write_loop(sock, blk, n, sent, stopped, most):
    """Writes `blk` (n counted in sent[0] each time) to `sock` in a thread until stopped() or
    sent[0] reaches `most`, reading and dropping the answers meanwhile."""
    sock.setblocking(True)
    def att():
        while not stopped() and sent[0] < most:
            try: sock.sendall(blk); sent[0] += n
            except Exception as e: print("att", e); return
    keep_reading(sock, stopped)
    threading.Thread(target=att, daemon=True).start()

def watch(http, secs, what):
    """Every 2 s for `secs`: what() and the store queue's peak and depth per shard."""
    t0 = time.time()
    while time.time() - t0 < secs:
        time.sleep(2)
        print(f"t={time.time()-t0:.0f} {what()} peak={gauges(http)} now={gauges(http, 'store_queue_requests')}", flush=True)
