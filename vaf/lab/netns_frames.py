"""Send raw frames from one namespace's eth0 and report which reached another's eth0.

``python3 netns_frames.py /run/netns/SRC /run/netns/DST '["<hex frame>", ...]'`` prints a JSON
list of booleans. Frames may be 802.1Q-tagged (the receiver sees them without the outer tag,
as the kernel delivers them) and carry IPv6. One process does both ends: a packet socket
keeps the namespace it was created in, so the receiver is opened in DST, then the process
moves to SRC and sends.
(``os.setns`` only exists from Python 3.12, hence ctypes.)
"""

import ctypes
import json
import os
import select
import socket
import sys
import time

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
WAIT_SECONDS = 1.0
MATCH_BYTES = 42  # Ethernet header + ARP body: the padding after it may differ
VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8")


def as_received(frame: bytes) -> bytes:
    """What a packet socket reads of ``frame``: the receiving kernel keeps an (outer) VLAN
    tag aside, out of the data; compared up to the end of the payload, not the padding."""
    if frame[12:14] in VLAN_TPIDS:
        frame = frame[:12] + frame[16:]
    if frame[12:14] == b"\x86\xdd":  # IPv6: header plus payload length
        return frame[:14 + 40 + int.from_bytes(frame[18:20], "big")]
    return frame[:MATCH_BYTES]


def enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def main(src: str, dst: str, frames_json: str) -> None:
    frames = [bytes.fromhex(item) for item in json.loads(frames_json)]
    enter(dst)
    receiver = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    receiver.bind(("eth0", 0))
    enter(src)
    sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sender.bind(("eth0", 0))
    for frame in frames:
        sender.send(frame)
    seen = set()
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline and len(seen) < len(frames):
        ready, _, _ = select.select([receiver], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            data = receiver.recv(65536)
            seen.update(i for i, frame in enumerate(frames)
                        if data.startswith(as_received(frame)))
    print(json.dumps([i in seen for i in range(len(frames))]))


if __name__ == "__main__":
    main(*sys.argv[1:])
