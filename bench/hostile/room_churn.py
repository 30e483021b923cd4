"""CreateRoom{members} / DeleteRoom churn. usage: room_churn.py TCP PID HTTP DDIR MEMBERS SECONDS SAME_NAME(0|1)"""
import sys, time, threading, select
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from common import *
tcp, pid, http, ddir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
M, secs, same = int(sys.argv[5]), float(sys.argv[6]), sys.argv[7] == "1"
for i in range(M): Conn(tcp, f"o{i}").close()   # offline members (exist)
a = Conn(tcp, "att"); names = [f"o{i}" for i in range(M)]
p = Probe(tcp, "honest", "store"); time.sleep(2); print("baseline", p.take(), state(pid, ddir, http), flush=True)
stop = False; done = {}
def reader():
    while not stop:
        r = a.recv(0.5)
        if r and r[0] == 'room_result':
            s = r[1].get(2, [0])[0]; done[s] = done.get(s, 0) + 1
def writer():
    i = 0
    while not stop:
        i += 1; n = "churn" if same else f"r{i}"
        a.send_frame(10, {1: 2*i, 2: n, 4: names}); a.send_frame(15, {1: 2*i+1, 2: n})
threading.Thread(target=reader, daemon=True).start(); threading.Thread(target=writer, daemon=True).start()
for k in range(int(secs)):
    time.sleep(2)
    print(f"t={2*(k+1)} results={done} honest={p.take()} {state(pid, ddir, http)}", flush=True)
    if 2*(k+1) >= secs: break
stop = True; p.close(); time.sleep(1)
print("offline backlog of o0:", end=" "); c = Conn(tcp, "o0", auto_ack=False); print(c.drain(0.5), flush=True)
