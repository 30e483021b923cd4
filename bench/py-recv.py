"""The Python client's own send + recv rate: one process sends N payloads of SIZE bytes
with send_many (a thread) and receives them with recv, on one router.
usage: python bench/py-recv.py ADDR SIZE N TAG   (TAG: a fresh suffix for the two users)"""
import sys, time, ringrouter
addr, size, n, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with ringrouter.Client(addr, f"pa{tag}") as a, ringrouter.Client(addr, f"pb{tag}") as b:
    p = b"x" * size
    t0 = time.perf_counter(); c0 = time.process_time()
    import threading
    th = threading.Thread(target=lambda: (a.send_many(f"pb{tag}", (p for _ in range(n))), a.flush()))
    th.start()
    got = 0
    while got < n:
        m = b.recv(timeout=10)
        if m is None: break
        got += 1
    th.join()
    dt = time.perf_counter() - t0; dc = time.process_time() - c0
    print(f"size {size}: {got/dt/1e3:.0f}k msgs/s, client cpu {dc/got*1e6:.2f} us/msg")
