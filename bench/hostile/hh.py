"""Helpers of big_dm.py: metrics, a pinger, a JSON WebSocket client."""
import sys, os, time, threading, subprocess, ssl, socket, select, json, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
from shardnames import home, names_on, gauges
from transports import T, ws_frame, ws_open, cf

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

def start(name, *flags):
    out = subprocess.run(["bash", "-c", f"cd {REPO} && RR=${{RR:-target/release/ringrouter}} bench/hostile/start.sh {name} {' '.join(flags)}"],
                         capture_output=True, text=True).stdout.split()
    pid, tcp, http, d = int(out[0]), out[1], out[2], out[3]
    return pid, tcp, http, d

def metrics_all(http, tls=False):
    url = f"{'https' if tls else 'http'}://{http}/metrics"
    ctx = ssl._create_unverified_context() if tls else None
    t = urllib.request.urlopen(url, timeout=5, context=ctx).read().decode()
    out = {}
    for l in t.splitlines():
        if l.startswith("#") or not l.startswith("ringrouter_"): continue
        k, v = l.rsplit(" ", 1)
        try: out[k] = float(v)
        except: pass
    return out

def pick(m, *names):
    return {n: m.get("ringrouter_" + n) for n in names}

class Pinger:
    """Pings every `every` s on its own connection (transport kind); latency samples (ms)."""
    def __init__(self, addr, kind, user, every=0.02):
        self.t = T(addr, kind); self.t.login(user); self.lat = []; self.stop = False; self.every = every
        self.th = threading.Thread(target=self.run, daemon=True); self.th.start()
    def run(self):
        i = 0
        while not self.stop:
            i += 1; t0 = time.time()
            try:
                self.t.send(4, {1: i}); self.t.wait("pong", 30); self.lat.append((time.time()-t0)*1000)
            except Exception as e:
                self.lat.append(99999)
            time.sleep(self.every)
    def take(self):
        l = sorted(self.lat); self.lat = []
        if not l: return "none"
        return f"n={len(l)} p50={l[len(l)//2]:.1f} p99={l[int(len(l)*.99)]:.1f} max={l[-1]:.1f}ms"

def rssm(pid): return rss(pid)/1024
def hwmm(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmHWM"): return int(l.split()[1])/1024
