"""Answer amplification: SESS sessions each pipeline 16 History pages (~1 MiB each) and never read.
usage: history_amp.py TCP PID HTTP SESS [ROUNDS]
  read pid tcp http dir < <(bench/hostile/start.sh amp); python3 bench/hostile/history_amp.py $tcp $pid $http 64 2; kill $pid
Before the twenty-third pass, 64 sessions held ~1 GB (16 pages each, 240 bytes asked); a
big-answer request is now the last frame read until its answer is written: one page each."""
import sys, os, time, socket
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, pid, http, SESS = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ROUNDS = int(sys.argv[5]) if len(sys.argv) > 5 else 1
M = ("sessions","pending_bytes","slow_consumer_closes_total","store_queue_bytes")
def st(tag): status(tag, pid, http, M)
Conn(tcp, "peer").close()
a = Conn(tcp, "amp")
for i in range(600):
    a.send_frame(2, {1: i+1, 2: "peer", 4: os.urandom(2000), 5: True})
    if i % 64 == 63: a.wait("send_result")
a.drain(0.5); a.close(); time.sleep(2.5)
c = Conn(tcp, "amp"); c.send_frame(40, {1: 1, 2: "peer", 5: 500}); r = c.wait("history_result")
print("one page:", sum(len(x) for x in r.get(4, [])), "bytes in", len(r.get(4, [])), "msgs"); c.close()
st("setup")
req = b"".join(frame(40, {1: i+1, 2: "peer", 5: 500}) for i in range(16))
print("request bytes per session:", len(req))
for rnd in range(ROUNDS):
    socks = []
    for i in range(SESS):
        s = Conn(tcp, "amp", device=f"d{i}")
        s.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.raw(req); socks.append(s)
    for k in range(5):
        time.sleep(0.5); st(f"round {rnd} +{(k+1)*0.5:.1f}s")
    for s in socks: s.close()
time.sleep(3); st("after")
