"""Ports for the servers the tests start: postern's listeners, Postfix,
unbound, sinks, metrics and control endpoints.

A port is picked below the kernel's ephemeral range (ip_local_port_range,
32768-60999 by default). The ports the kernel hands out itself come from that
range: a listener bound to port 0 (postern's own, in many tests) and the local
end of every outgoing connection. A port picked here, and left free until its
server binds it, cannot be taken in between by one of those; when the pick was
the kernel's own (bind to port 0, close), two tests a core made that happen
(postern's listener got the port just picked for its metrics listener).
Picks are random (from the system's generator: a test that seeds `random`
does not make two processes pick alike), checked free, and never handed out
twice by one process."""

import random
import socket

_LOWEST = 10000
_picker = random.SystemRandom()
_handed_out = set()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free(port, udp):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(udp=False):
    """A port on 127.0.0.1 nothing uses right now, for TCP (and UDP with udp=True)."""
    highest = _ephemeral_low() - 1
    if highest - _LOWEST < 1000:  # a machine whose ephemeral range starts low: the kernel's pick
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out and _free(port, udp):
                _handed_out.add(port)
                return port
        raise RuntimeError("no free loopback port")
    for _ in range(500):
        port = _picker.randint(_LOWEST, highest)
        if port not in _handed_out and _free(port, udp):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {_LOWEST}-{highest}")
