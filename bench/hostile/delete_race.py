"""DeleteAccount with requests pipelined behind it on the same connection: what they create
outlives the account, and the next owner of the name inherits it.
usage: delete_race.py TCP"""
import sys, os, time
sys.path.insert(0, os.path.dirname(__file__))
from common import *
addr = sys.argv[1]
st = lambda d: d.get(2, [0])[0]
bob = Conn(addr, "bob"); carol = Conn(addr, "carol")
bob.send_frame(10, {1: 1, 2: "public"}); print("bob creates public:", st(bob.wait("room_result")))
a = Conn(addr, "alice")
a.send_frame(10, {1: 1, 2: "alices-secret", 3: "pw"}); print("alice creates alices-secret:", st(a.wait("room_result")))
a.send_frame(2, {1: 2, 3: "alices-secret", 4: "old alice's private note", 5: True}); print("note:", st(a.wait("send_result")))
# pipelined: DeleteAccount, then a CreateRoom, a JoinRoom, a ContactOp request
a.raw(frame(31, {1: 10}) + frame(10, {1: 11, 2: "alices-late-room"}) + frame(11, {1: 12, 2: "public"})
      + frame(20, {1: 13, 2: "carol", 3: 1}))
got = []
try:
    while True:
        r = a.recv(3)
        if r is None: break
        if r[0] in ("account_result", "room_result", "contact_result", "error"): got.append((r[0], st(r[1]) if r[0] != 'error' else r[1]))
except EOFError:
    pass
print("alice's answers:", got)
time.sleep(1.5)
n = Conn(addr, "alice")  # the name's next owner (open auth: anyone; accounts: whoever registers it)
n.send_frame(16, {1: 1}); r = n.wait("room_result"); print("new alice ListRooms:", r.get(6))
n.send_frame(17, {1: 2, 2: "alices-late-room"}); r = n.wait("room_result"); print("new alice RoomInfo alices-late-room:", st(r), r.get(7), r.get(8))
n.send_frame(17, {1: 3, 2: "alices-secret"}); r = n.wait("room_result"); print("new alice RoomInfo alices-secret:", st(r))
bob.send_frame(17, {1: 5, 2: "public"}); r = bob.wait("room_result"); print("bob RoomInfo public members:", r.get(8))
carol.drain(0.3)
carol.send_frame(21, {1: 6}); r = carol.wait("contact_result"); print("carol's contacts:", [parse(e) for e in r.get(5, [])])
n.send_frame(21, {1: 7}); r = n.wait("contact_result"); print("new alice's contacts:", [parse(e) for e in r.get(5, [])])
