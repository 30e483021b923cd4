"""A user blocked by more than --max-loaded-blockers (1 100 here) sends the same CreateRoom
with 9 998 initial members (none of them blocks it) plus one loaded blocker, five times.
Expected every time: FORBIDDEN naming the blocker. Seen: the first FORBIDDEN, then
UNAVAILABLE "blocks could not be read: <member>" for ever: the lookups kept with the list
(256) are evicted by the answer of the lookup that left them out."""
import sys, os, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
import tempfile; ddir = tempfile.mkdtemp(prefix="rr-blockers-unav-")
p, tcp, http = start_router(sys.argv[1], ddir, sys.argv[2:])
Conn(tcp, "spam").close()
for i in range(1100):
    c = Conn(tcp, "blk%04d" % i); c.send_frame(20, {1: 1, 2: "spam", 3: 5}); c.wait("contact_result"); c.close()
n = int(os.environ.get("NMEM", "9999"))
members = [("a" + "x" * 58 + "%05d" % i) for i in range(n - 1)] + ["blk0000"]
c = Conn(tcp, "spam")
for k in range(5):
    t0 = time.time(); c.raw(frame(10, {1: k, 2: "room", 4: members})); r = c.wait("room_result", 60)
    print(k, "%.0fms" % ((time.time() - t0) * 1000), "status", r.get(2), r.get(3))
p.terminate(); p.wait(); print("exit", p.returncode)
