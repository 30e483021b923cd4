"""Honest TLS logins during a ClientHello replay flood (no crypto on the flooder's side).

  read pid tcp http dir < <(bench/hostile/start.sh tls --tls-cert C.pem --tls-key K.pem)
  python3 bench/hostile/tls_login_dos.py $tcp $pid PROCS WIDTH SECS [HONEST_FROM]; kill $pid

PROCS processes replay one ClientHello on WIDTH connections at a time each (from the
router's address as given, e.g. 127.0.0.1) for SECS; meanwhile an honest client does a
fresh TLS connect + Login every 200 ms (retrying at once on failure, up to 10 s) from
HONEST_FROM (default 127.0.0.2: another loopback address, so that the per-address share
of --max-tls-handshakes-per-ip tells the two apart). Prints per phase (no flood, flood,
after) the time to a LoginResult and how many tries it took."""
import sys, os, time, socket, multiprocessing as mp
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tls_flood import hello_flooder, ctx, read_frame, cpu
from wire import frame

addr, pid, procs, width, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
honest_from = sys.argv[6] if len(sys.argv) > 6 else "127.0.0.2"


def tls_conn_from(addr, src):
    host, port = addr.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.bind((src, 0))
    s.connect((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx().wrap_socket(s, server_hostname="localhost")


def honest_login(user):
    t0 = time.time(); tries = 0
    while time.time() - t0 < 10:
        tries += 1
        try:
            s = tls_conn_from(addr, honest_from)
            s.sendall(frame(1, {2: user})); buf = bytearray()
            if read_frame(s, buf) == "login_result":
                s.close(); return (time.time() - t0) * 1000, tries
        except Exception:
            pass
    return None, tries


def phase(tag, dur):
    res = []; end = time.time() + dur; k = 0
    while time.time() < end:
        k += 1; res.append(honest_login(f"hon{k % 50}")); time.sleep(0.2)
    okl = sorted(r[0] for r in res if r[0] is not None)
    fail = sum(1 for r in res if r[0] is None)
    tries = sorted(r[1] for r in res)
    line = f"[{tag}] logins={len(res)} gave_up_after_10s={fail}"
    if okl: line += f" time-to-login p50={okl[len(okl)//2]:.0f}ms max={okl[-1]:.0f}ms"
    line += f" tries p50={tries[len(tries)//2]} max={tries[-1]}"
    print(line, flush=True)


phase("no flood", 3)
counter = mp.Value("l", 0); failed = mp.Value("l", 0)
until = time.time() + secs
c0 = cpu(pid)
ps = [mp.Process(target=hello_flooder, args=(addr, until, counter, failed, width)) for _ in range(procs)]
for p in ps: p.start()
time.sleep(1)
phase("flood", secs - 2)
for p in ps: p.join()
print(f"flood: {counter.value} ClientHellos answered, {failed.value} refused/closed; router cpu {cpu(pid)-c0:.1f}s", flush=True)
time.sleep(1)
phase("after", 3)
