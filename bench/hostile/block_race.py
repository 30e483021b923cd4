"""Is a block in force when its ContactResult OK arrives? DM from the blocked user right after.
usage: block_race.py TCP N"""
import sys, os, time
sys.path.insert(0, os.path.dirname(__file__))
from common import *
addr, n = sys.argv[1], int(sys.argv[2])
st = lambda d: d.get(2, [0])[0]
leaks = 0
for i in range(n):
    m = Conn(addr, f"mal{i}"); v = Conn(addr, f"vic{i}")
    v.send_frame(20, {1: 1, 2: f"mal{i}", 3: 5}); assert st(v.wait("contact_result")) == 1
    m.send_frame(2, {1: 2, 2: f"vic{i}", 4: "after block", 5: True})
    if st(m.wait("send_result")) == 1: leaks += 1
    m.close(); v.close()
print(f"DMs accepted right after the block's OK: {leaks}/{n}")
