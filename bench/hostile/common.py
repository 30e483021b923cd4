import sys, os, time, threading, urllib.request, statistics
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wire import *

def metrics(http, names=("store_queue_requests","store_queue_bytes","store_requests_total","offline_stored_total","sessions")):
    try:
        t = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    except Exception as e:
        return {"err": str(e)}
    out = {}
    for l in t.splitlines():
        if l.startswith("#"): continue
        for n in names:
            if l.startswith("ringrouter_"+n+" ") or l.startswith("ringrouter_"+n+"{") and "shard=" not in l:
                try: out[n] = float(l.split()[-1])
                except: pass
    return out

class Probe:
    """An honest user measuring round trips: kind 'ping' (shard only) or 'store' (ListRooms)."""
    def __init__(self, addr, user="honest", kind="store", every=0.02):
        self.c = Conn(addr, user); self.kind = kind; self.every = every
        self.lat = []; self.stop = False; self.errors = 0
        self.t = threading.Thread(target=self.run, daemon=True); self.t.start()
    def run(self):
        i = 0
        while not self.stop:
            i += 1; t0 = time.time()
            try:
                if self.kind == "ping":
                    self.c.send_frame(4, {1: i}); self.c.wait("pong", 30)
                else:
                    self.c.send_frame(16, {1: i}); self.c.wait("room_result", 30)
                self.lat.append((time.time()-t0)*1000)
            except Exception as e:
                self.errors += 1
            time.sleep(self.every)
    def take(self):
        l = self.lat; self.lat = []
        if not l: return "no samples"
        l = sorted(l)
        return f"n={len(l)} p50={l[len(l)//2]:.2f}ms p99={l[int(len(l)*0.99)]:.2f}ms max={l[-1]:.2f}ms"
    def close(self):
        self.stop = True; self.t.join(5)

def state(pid, ddir, http):
    return f"rss={rss(pid)/1024:.1f}MiB cpu={cpu(pid):.2f}s disk={du(ddir)/2**20:.1f}MiB {metrics(http)}"

def hwm(pid):
    """Peak RSS (VmHWM) of process `pid`, KiB."""
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmHWM"): return int(l.split()[1])

def status(tag, pid, http, names, with_cpu=False):
    """One line: RSS, peak RSS, CPU (with_cpu) and the gauges `names` of the router."""
    c = f" cpu={cpu(pid):.1f}s" if with_cpu else ""
    print(f"[{tag}] rss={rss(pid)/1024:.0f}MiB hwm={hwm(pid)/1024:.0f}MiB{c} {metrics(http, names)}", flush=True)

class HonestPair:
    """Two honest users of their own timing a direct message: `dm_ms()` one round trip,
    `lat(n)` the p50 and max of n."""
    def __init__(self, tcp, a="hon1", b="hon2"):
        self.a = Conn(tcp, a); self.b = Conn(tcp, b); self.bn = b
    def dm_ms(self):
        t0 = time.time(); self.a.send_frame(2, {1: 1, 2: self.bn, 4: b"hi"}); self.b.wait("deliver", 30); self.b.ack()
        return (time.time()-t0)*1000
    def lat(self, n=10):
        l = sorted(self.dm_ms() for _ in range(n)); return f"p50={l[n//2]:.1f}ms max={l[-1]:.1f}ms"
    def loop(self, running, every=0.05):
        """Times a DM every `every` s in a thread of its own while `running()`; returns the
        list the round trips (ms; 99999 for a failure) are appended to."""
        out = []
        def run():
            while running():
                try: out.append(self.dm_ms())
                except Exception: out.append(99999)
                time.sleep(every)
        threading.Thread(target=run, daemon=True).start()
        return out
