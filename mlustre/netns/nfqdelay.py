"""nfqdelay.py - delay (and reorder) the packets of one network namespace's link
through the kernel's NFQUEUE, for kernels without sch_netem.

`tc qdisc ... netem delay 50ms` is the faithful tool, and `scripts/netns-cluster fault
delay` uses it where the kernel has netem. Where it does not (this project's CI kernel),
iptables' NFQUEUE target hands each packet of the link to this process, which keeps
only its id and gives the verdict (accept) DELAY later: the packet itself stays queued
in the kernel the whole time, is never copied to userspace and is reinjected where it
was taken, so TCP sees a link that holds packets for DELAY, as with netem. What differs
from netem: the delay has this process's timer granularity (well under a millisecond
at these rates), a full queue (QUEUE_MAXLEN packets) lets packets through undelayed
(fail-open) rather than dropping them, and `--reorder P` lets P percent of the packets
through at once instead of holding them, as netem's `reorder P%` does.

Run inside the namespace (netlink queues are per network namespace):
    python -m mlustre.netns.nfqdelay --queue N --delay-ms 50 [--jitter-ms J] [--reorder P]
It prints READY once bound, and runs until SIGTERM. Pure netlink: no library needed.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_ACCEPT = 1
QUEUE_MAXLEN = 65536


def _attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _message(msg_type: int, queue: int, attrs: bytes, seq: int, flags: int) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs  # nfgenmsg
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type,
                       NLM_F_REQUEST | flags, seq, 0) + body


def config_messages(queue: int) -> list[bytes]:
    """Bind the queue, ask for metadata only (the packet stays in the kernel), a long
    queue, and fail-open when it is full."""
    return [
        _message(NFQNL_MSG_CONFIG, queue,
                 _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)), 1, NLM_F_ACK),
        _message(NFQNL_MSG_CONFIG, queue,
                 _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                 + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
                 + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
                 + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)), 2, NLM_F_ACK),
    ]


def verdict_message(queue: int, packet_id: int) -> bytes:
    return _message(NFQNL_MSG_VERDICT, queue,
                    _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id)), 0, 0)


def parse_messages(data: bytes) -> tuple[list[int], list[int]]:
    """Packet ids queued to us, and the error codes of netlink acks (0: success)."""
    ids: list[int] = []
    errors: list[int] = []
    off = 0
    while off + 16 <= len(data):
        length, msg_type, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if msg_type == NLMSG_ERROR:
            errors.append(-struct.unpack_from("=i", data, off + 16)[0])
        elif msg_type == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            a = off + 20  # nlmsghdr + nfgenmsg
            while a + 4 <= off + length:
                alen, kind = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if kind & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, a + 4)[0])
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return ids, errors


def run(queue: int, delay: float, jitter: float, reorder: float) -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((0, 0))
    for msg in config_messages(queue):
        sock.send(msg)
        _ids, errors = parse_messages(sock.recv(65536))
        if any(errors):
            print(f"nfqdelay: binding queue {queue} failed: {os.strerror(errors[0])}",
                  file=sys.stderr)
            return 1
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(f"READY nfqdelay queue={queue} delay_ms={delay * 1000:g}", flush=True)
    held: list[tuple[float, int]] = []  # (release time, packet id), a heap
    rng = random.Random()
    while not stop or held:
        now = time.monotonic()
        while held and held[0][0] <= now:
            sock.send(verdict_message(queue, heapq.heappop(held)[1]))
        if stop:  # let what we hold go at once: nothing is kept queued after us
            while held:
                sock.send(verdict_message(queue, heapq.heappop(held)[1]))
            break
        wait = max(0.0, held[0][0] - now) if held else 0.5
        try:
            ready, _, _ = select.select([sock], [], [], wait)
        except InterruptedError:
            continue
        if not ready:
            continue
        try:
            data = sock.recv(1 << 20)
        except OSError:  # ENOBUFS: the kernel let packets through (fail-open)
            continue
        ids, _errors = parse_messages(data)
        now = time.monotonic()
        for pid in ids:
            if reorder and rng.random() * 100 < reorder:
                sock.send(verdict_message(queue, pid))
                continue
            extra = rng.uniform(-jitter, jitter) if jitter else 0.0
            heapq.heappush(held, (now + max(0.0, delay + extra), pid))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="nfqdelay")
    p.add_argument("--queue", type=int, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--reorder", type=float, default=0.0,
                   help="percent of packets let through at once (the rest are delayed)")
    a = p.parse_args()
    return run(a.queue, a.delay_ms / 1000, a.jitter_ms / 1000, a.reorder)


if __name__ == "__main__":
    sys.exit(main())
