"""Minimal hand-rolled protobuf wire client for ringrouter (audit scripts)."""
import socket, struct, time, os, select, re, subprocess, sys, urllib.request

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f; n >>= 7
        if n: out.append(b | 0x80)
        else: out.append(b); return bytes(out)

def field(num, val):
    if isinstance(val, bool): val = int(val)
    if isinstance(val, int):
        return varint(num << 3) + varint(val)
    if isinstance(val, str): val = val.encode()
    if isinstance(val, dict): val = msg(val)
    return varint((num << 3) | 2) + varint(len(val)) + val

def msg(d):
    out = b""
    for k, v in d.items():
        if v is None: continue
        if isinstance(v, list):
            for x in v: out += field(k, x)
        else:
            out += field(k, v)
    return out

def frame(kind, body):
    m = field(kind, body if isinstance(body, (bytes, bytearray)) else msg(body))
    if isinstance(body, dict) and not body:
        m = varint((kind << 3) | 2) + varint(0)
    return varint(len(m)) + m

def read_varint(b, i):
    n = 0; s = 0
    while True:
        c = b[i]; i += 1
        n |= (c & 0x7f) << s; s += 7
        if not c & 0x80: return n, i

def parse(b):
    """-> dict field -> list of (int | bytes)"""
    d = {}; i = 0
    while i < len(b):
        key, i = read_varint(b, i)
        f, t = key >> 3, key & 7
        if t == 0: v, i = read_varint(b, i)
        elif t == 2:
            l, i = read_varint(b, i); v = bytes(b[i:i+l]); i += l
        elif t == 1: v = b[i:i+8]; i += 8
        elif t == 5: v = b[i:i+4]; i += 4
        else: raise ValueError("wt %d" % t)
        d.setdefault(f, []).append(v)
    return d

SF = {1:'login_result',2:'send_result',3:'deliver',4:'pong',5:'error',6:'ping',10:'room_result',
      11:'room_event',12:'receipt',30:'account_result',40:'history_result',41:'conversations_result',
      20:'contact_result',21:'contact_event',25:'presence',26:'presence_result',50:'send_ack'}

class Conn:
    def __init__(self, addr, user=None, device=None, resume=False, token=None, password=None, auto_ack=True):
        host, port = addr.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(); self.rid = 0; self.auto_ack = auto_ack; self.max_seq = 0
        self.login_result = None
        if user:
            l = {2: user}
            if password: l[3] = password
            if device: l[5] = device
            if resume: l[6] = True
            if token: l[7] = token
            self.send_frame(1, l)
            self.login_result = self.wait('login_result')
    def send_frame(self, kind, body):
        self.s.sendall(frame(kind, body))
    def raw(self, data): self.s.sendall(data)
    def next_rid(self):
        self.rid += 1; return self.rid
    def _fill(self, timeout):
        r, _, _ = select.select([self.s], [], [], timeout)
        if not r: return False
        d = self.s.recv(1 << 20)
        if not d: raise EOFError("closed")
        self.buf += d; return True
    def recv(self, timeout=5.0):
        end = time.time() + timeout
        while True:
            if self.buf:
                try:
                    l, i = read_varint(self.buf, 0)
                    if len(self.buf) >= i + l:
                        m = bytes(self.buf[i:i+l]); del self.buf[:i+l]
                        d = parse(m); k = next(iter(d)); inner = parse(d[k][0])
                        name = SF.get(k, str(k))
                        if name == 'ping':
                            self.send_frame(5, {1: inner.get(1, [0])[0]})
                        if name in ('deliver','room_event','contact_event') and inner.get(1 if name!='room_event' and name!='contact_event' else 4, [0])[0]:
                            seq = inner.get(1 if name=='deliver' else 4)[0]
                            self.max_seq = max(self.max_seq, seq)
                        return name, inner
                except IndexError:
                    pass
            left = end - time.time()
            if left <= 0: return None
            if not self._fill(left): return None
    def wait(self, name, timeout=10.0):
        end = time.time() + timeout
        while True:
            left = end - time.time()
            if left <= 0: raise TimeoutError(name)
            r = self.recv(left)
            if r is None: raise TimeoutError(name)
            if r[0] == name: return r[1]
    def ack(self):
        if self.max_seq: self.send_frame(3, {1: self.max_seq})
    def drain(self, t=0.2):
        n = 0
        while self.recv(t) is not None: n += 1
        if self.auto_ack: self.ack()
        return n
    def close(self): self.s.close()

def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")",1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def du(path):
    tot = 0
    for root, _, files in os.walk(path):
        for f in files:
            try: tot += os.path.getsize(os.path.join(root, f))
            except OSError: pass
    return tot

def start_router(binary, ddir, args):
    """Starts BINARY with its store in DDIR/data and ARGS, both ports on free ones; returns
    (process, tcp address, http address). Its output goes to DDIR/log."""
    log = open(os.path.join(ddir, "log"), "w+")
    p = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
         "--data-dir", os.path.join(ddir, "data")] + list(args),
        stdout=log, stderr=subprocess.STDOUT)
    t = ""
    for _ in range(600):
        time.sleep(0.05)
        log.seek(0)
        t = log.read()
        m = re.search(r"listening on (\S+)", t)
        h = re.search(r"http on (\S+)", t)
        if m and h:
            return p, m.group(1), h.group(1)
    p.kill()
    sys.exit("the router did not start:\n" + t)

def metric(http, name):
    """The router's total of metric NAME (0 when absent)."""
    t = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()
    for line in t.splitlines():
        if line.startswith(f"ringrouter_{name} "):
            return float(line.split()[-1])
    return 0.0
