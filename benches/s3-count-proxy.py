#!/usr/bin/env python3
"""Counting HTTP/1.1 forwarding proxy for S3, used by benches/s3.sh.

    s3-count-proxy.py --upstream http://127.0.0.1:19002 [--listen 127.0.0.1:0]
                      [--port-file FILE] [--out FILE] [--bucket NAME]

Clients use http://127.0.0.1:PORT as their S3 endpoint (path-style). Every
request is forwarded to the upstream unchanged: same request line, same
headers (Host included, since SigV4 signs it) and the same body bytes, whether
framed by Content-Length (aws-chunked streaming uploads included) or by
Transfer-Encoding: chunked. Only the hop-by-hop Connection / Keep-Alive /
Proxy-Connection headers are replaced, by `Connection: close` upstream
unless the client signed them. Each request gets a fresh upstream connection;
client connections are kept alive when the response framing allows it. An
`Expect: 100-continue` is answered at once and the upstream's own 1xx
answers are dropped.

Requests are counted by method and by S3 operation:

    get          GET of an object, no Range header
    get_range    GET of an object with a Range header
    list         GET of the bucket with list-type / prefix / delimiter /
                 marker / continuation-token (or no query at all)
    bucket_get   any other GET of the bucket (?location, ?versioning, ...)
    head         HEAD of an object          head_bucket  HEAD of the bucket
    put          PUT of an object           put_part     PUT ?partNumber&uploadId
    put_copy     PUT with x-amz-copy-source put_bucket   PUT of the bucket
    mpu_create   POST ?uploads              mpu_complete POST ?uploadId
    delete_multi POST ?delete               post_other   any other POST
    delete       DELETE of an object        mpu_abort    DELETE ?uploadId
    list_parts   GET ?uploadId              other        anything else

Per operation: requests, non-2xx statuses, request body bytes on the wire
(`up_wire`), the payload they carry (`up`: x-amz-decoded-content-length for
aws-chunked uploads, the de-chunked size for chunked ones) and response body
bytes (`down`; `down_ok` counts 2xx answers only). Failed exchanges
(connection reset, upstream unreachable) are counted under `errors`.

Output: the cumulative counts as JSON in --out, rewritten at most every 0.2 s
while requests complete, and on exit (SIGTERM, SIGINT). Two control paths
are answered by the proxy itself, never forwarded or counted; both first
wait (up to 10 s) until no forwarded request is in progress:

    GET /__proxy__/counts   the cumulative counts
    GET /__proxy__/take     the counts since the previous take (or start),
                            and starts a new period

Python 3.11 standard library only.
"""
import argparse
import copy
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

BUF = 1 << 20
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection"}


class ProxyError(Exception):
    pass


def new_counts():
    return {"requests": 0, "errors": 0, "by_method": {}, "by_op": {}, "status": {}}


def add_counts(total, ev):
    """Adds one finished exchange `ev` to the counts dict `total`."""
    total["requests"] += 1
    if ev.get("error"):
        total["errors"] += 1
    m = ev["method"]
    total["by_method"][m] = total["by_method"].get(m, 0) + 1
    op = total["by_op"].setdefault(
        ev["op"], {"n": 0, "up": 0, "up_wire": 0, "down": 0, "down_ok": 0, "non2xx": {}})
    op["n"] += 1
    op["up"] += ev["up"]
    op["up_wire"] += ev["up_wire"]
    op["down"] += ev["down"]
    if 200 <= ev["status"] < 300:
        op["down_ok"] += ev["down"]
    st = str(ev["status"]) if ev["status"] else "none"
    total["status"][st] = total["status"].get(st, 0) + 1
    if not ev["status"] or not 200 <= ev["status"] < 300:
        op["non2xx"][st] = op["non2xx"].get(st, 0) + 1


class Stats:
    def __init__(self, out):
        self.lock = threading.Condition()
        self.total = new_counts()
        self.period = new_counts()
        self.busy = 0
        self.out = out
        self.last_write = 0.0

    def begin(self):
        with self.lock:
            self.busy += 1

    def end(self, ev):
        with self.lock:
            if ev is not None:
                add_counts(self.total, ev)
                add_counts(self.period, ev)
            self.busy -= 1
            self.lock.notify_all()
            now = time.monotonic()
            if ev is not None and now - self.last_write > 0.2:
                self.last_write = now
                self._write()

    def wait_idle(self, timeout=10.0):
        with self.lock:
            self.lock.wait_for(lambda: self.busy == 0, timeout)
            return self.busy

    def snapshot(self, take):
        busy = self.wait_idle()
        with self.lock:
            if take:
                snap, self.period = self.period, new_counts()
            else:
                snap = copy.deepcopy(self.total)
            snap["busy_at_snapshot"] = busy
            self._write()
            return snap

    def _write(self):
        if not self.out:
            return
        tmp = self.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.total, f, indent=1, sort_keys=True)
        os.replace(tmp, self.out)

    def write(self):
        with self.lock:
            self._write()


def classify(method, target, headers, bucket):
    """S3 operation name of a path-style request."""
    u = urllib.parse.urlsplit(target)
    path = urllib.parse.unquote(u.path)
    q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
    parts = path.lstrip("/").split("/", 1)
    key = parts[1] if len(parts) > 1 else ""
    if bucket and parts[0] != bucket:
        key = path  # not path-style for our bucket: treat as an object
    on_bucket = key == ""
    if method == "GET":
        if on_bucket:
            listing = {"list-type", "prefix", "delimiter", "marker", "continuation-token",
                       "start-after", "max-keys"}
            return "list" if (not q or listing & q.keys()) else "bucket_get"
        if "uploadId" in q:
            return "list_parts"
        return "get_range" if "range" in headers else "get"
    if method == "HEAD":
        return "head_bucket" if on_bucket else "head"
    if method == "PUT":
        if on_bucket:
            return "put_bucket"
        if "partNumber" in q and "uploadId" in q:
            return "put_part"
        if "x-amz-copy-source" in headers:
            return "put_copy"
        return "put"
    if method == "POST":
        if "uploads" in q:
            return "mpu_create"
        if "uploadId" in q:
            return "mpu_complete"
        if "delete" in q:
            return "delete_multi"
        return "post_other"
    if method == "DELETE":
        return "mpu_abort" if "uploadId" in q else "delete"
    return "other"


def read_head(rfile):
    """Start line and header lines (raw bytes, CRLF kept) of one message."""
    line = rfile.readline(65537)
    if not line:
        return None, []
    if not line.endswith(b"\n"):
        raise ProxyError("start line too long")
    lines = []
    while True:
        h = rfile.readline(65537)
        if not h:
            raise ProxyError("connection closed in headers")
        if h in (b"\r\n", b"\n"):
            return line, lines
        lines.append(h)
        if len(lines) > 200:
            raise ProxyError("too many header lines")


def header_map(lines):
    m = {}
    for h in lines:
        name, _, value = h.decode("latin-1").partition(":")
        m[name.strip().lower()] = value.strip()
    return m


def copy_exact(src, dst, n):
    """Copies exactly n bytes from the file `src` to the socket `dst`."""
    left = n
    while left > 0:
        chunk = src.read(min(left, BUF))
        if not chunk:
            raise ProxyError(f"body ended {left} bytes early")
        if dst is not None:
            dst.sendall(chunk)
        left -= len(chunk)
    return n


def copy_chunked(src, dst):
    """Relays a chunked body verbatim; returns (wire bytes, payload bytes)."""
    wire = payload = 0
    while True:
        line = src.readline(65537)
        if not line.endswith(b"\n"):
            raise ProxyError("bad chunk size line")
        dst.sendall(line)
        wire += len(line)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, then the empty line
                t = src.readline(65537)
                if not t:
                    raise ProxyError("connection closed in trailers")
                dst.sendall(t)
                wire += len(t)
                if t in (b"\r\n", b"\n"):
                    return wire, payload
        copy_exact(src, dst, size)
        crlf = src.readline(3)
        dst.sendall(crlf)
        wire += size + len(crlf)
        payload += size


def copy_to_close(src, dst):
    n = 0
    while True:
        chunk = src.read1(BUF)
        if not chunk:
            return n
        dst.sendall(chunk)
        n += len(chunk)


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        conn = self.request
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = conn.makefile("rb", buffering=BUF)
        try:
            while self.one_exchange(conn, rfile):
                pass
        except (OSError, ProxyError):
            pass
        finally:
            rfile.close()

    def one_exchange(self, conn, rfile):
        """Forwards one request; False when the client connection must close."""
        stats = self.server.stats
        try:
            start, lines = read_head(rfile)
        except (OSError, ProxyError):
            return False
        if start is None:
            return False
        try:
            method, target, version = start.decode("latin-1").rstrip("\r\n").split(" ", 2)
        except ValueError:
            return False
        if target.startswith("/__proxy__/"):
            return self.control(conn, target)

        hdrs = header_map(lines)
        stats.begin()
        ev = {"method": method, "op": classify(method, target, hdrs, self.server.bucket),
              "status": 0, "up": 0, "up_wire": 0, "down": 0, "error": None}
        keep = True
        try:
            keep = self.forward(conn, rfile, start, lines, hdrs, method, version, ev)
        except (OSError, ProxyError, ValueError) as e:
            ev["error"] = f"{type(e).__name__}: {e}"
            keep = False
        finally:
            stats.end(ev)
        return keep

    def forward(self, conn, rfile, start, lines, hdrs, method, version, ev):
        # Headers the client signed are forwarded even when hop-by-hop.
        signed = set()
        auth = hdrs.get("authorization", "")
        if "SignedHeaders=" in auth:
            signed = set(auth.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";"))
        drop = HOP_BY_HOP - signed
        out = [start]
        out += [h for h in lines
                if h.decode("latin-1").partition(":")[0].strip().lower() not in drop]
        if "connection" not in signed:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")

        client_close = (hdrs.get("connection", "").lower() == "close"
                        or version.upper() == "HTTP/1.0")
        if hdrs.get("expect", "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

        up = socket.create_connection(self.server.upstream, timeout=600)
        try:
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up.sendall(b"".join(out))
            te = hdrs.get("transfer-encoding", "").lower()
            if "chunked" in te:
                ev["up_wire"], ev["up"] = copy_chunked(rfile, up)
            elif "content-length" in hdrs:
                ev["up_wire"] = ev["up"] = copy_exact(rfile, up, int(hdrs["content-length"]))
            decoded = hdrs.get("x-amz-decoded-content-length")
            if decoded is not None and decoded.isdigit():
                ev["up"] = int(decoded)

            ufile = up.makefile("rb", buffering=BUF)
            try:
                while True:  # skip interim 1xx answers
                    rstart, rlines = read_head(ufile)
                    if rstart is None:
                        raise ProxyError("upstream closed without an answer")
                    status = int(rstart.split(b" ", 2)[1])
                    if status >= 200 or status == 101:
                        break
                ev["status"] = status
                rh = header_map(rlines)
                rout = [rstart]
                rout += [h for h in rlines
                         if h.decode("latin-1").partition(":")[0].strip().lower()
                         not in HOP_BY_HOP]
                no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
                rte = rh.get("transfer-encoding", "").lower()
                framed = no_body or "chunked" in rte or "content-length" in rh
                keep = framed and not client_close
                rout.append(b"Connection: keep-alive\r\n\r\n" if keep
                            else b"Connection: close\r\n\r\n")
                conn.sendall(b"".join(rout))
                if no_body:
                    pass
                elif "chunked" in rte:
                    ev["down"] = copy_chunked(ufile, conn)[1]
                elif "content-length" in rh:
                    ev["down"] = copy_exact(ufile, conn, int(rh["content-length"]))
                else:
                    ev["down"] = copy_to_close(ufile, conn)
            finally:
                ufile.close()
        finally:
            up.close()
        return keep

    def control(self, conn, target):
        what = target[len("/__proxy__/"):].split("?", 1)[0]
        if what in ("counts", "take"):
            body = json.dumps(self.server.stats.snapshot(take=what == "take"),
                              sort_keys=True).encode()
            status = b"200 OK"
        else:
            body, status = b'{"error":"unknown control path"}', b"404 Not Found"
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() +
                     b"\r\nConnection: close\r\n\r\n" + body)
        return False


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="http://HOST:PORT of the S3 server")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    ap.add_argument("--port-file", help="write the listening port here once ready")
    ap.add_argument("--out", help="JSON counts file")
    ap.add_argument("--bucket", help="bucket name (tells bucket requests from object requests)")
    args = ap.parse_args()

    u = urllib.parse.urlsplit(args.upstream)
    if u.scheme != "http" or not u.hostname:
        sys.exit("--upstream must be http://HOST:PORT")
    host, _, port = args.listen.rpartition(":")
    server = Server((host or "127.0.0.1", int(port)), Handler)
    server.upstream = (u.hostname, u.port or 80)
    server.bucket = args.bucket
    server.stats = Stats(args.out)

    def stop(signum, frame):
        server.stats.write()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.stats.write()
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{server.server_address[1]}\n")
        os.replace(tmp, args.port_file)
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
