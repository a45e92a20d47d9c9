"""The demo's "external API": a small HTTPS JSON API, run by demo.sh in its
own network namespace with a certificate from a throwaway CA."""
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class API(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, code, doc):
        body = json.dumps(doc).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, {"path": self.path, "weather": "sunny", "served_by": "demo-api"})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(n) or b"{}")
        self._send(200, {"jsonrpc": "2.0", "id": req.get("id"), "result": {"ok": True, "path": self.path}})

    def log_message(self, fmt, *args):
        sys.stderr.write("api: " + fmt % args + "\n")


addr, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]
srv = ThreadingHTTPServer((addr, 443), API)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
