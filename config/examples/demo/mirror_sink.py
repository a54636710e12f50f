#!/usr/bin/env python3
"""The demo's mirror target: accepts mirrored sessions and prints what each one carried.

It reads everything a session sends (as a real analytics consumer would) and logs the
first request line, so you can watch mirroring happen next to the curl output.
"""
import socket
import sys
import threading


def handle(conn, addr):
    total = 0
    first = b""
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            if not first:
                first = data.split(b"\r\n", 1)[0][:120]
            total += len(data)
    print(f"mirror sink: session from {addr[0]}:{addr[1]}: {total} bytes, "
          f"first line: {first.decode('latin-1')!r}", flush=True)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    print(f"mirror sink: listening on 127.0.0.1:{port}", flush=True)
    while True:
        conn, addr = srv.accept()
        threading.Thread(target=handle, args=(conn, addr), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
