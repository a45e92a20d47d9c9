"""An MCP-server-like process: it serves tools by calling an external API
over HTTPS. It knows nothing of Sluice: no proxy variables, it only
trusts the CA bundle that `sluice run` points SSL_CERT_FILE at."""
import json
import socket
import sys
import urllib.error
import urllib.request

API_IP = sys.argv[1]

# The demo has no DNS server: resolve the API's name to its test address.
_real_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kw):
    if host == "api.demo.test":
        host = API_IP
    return _real_getaddrinfo(host, *args, **kw)


socket.getaddrinfo = getaddrinfo


def call(method, path, doc=None):
    data = json.dumps(doc).encode() if doc is not None else None
    req = urllib.request.Request("https://api.demo.test" + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()


print("tool get_weather ->", *call("GET", "/v1/weather?city=Lisbon"))
print("tool read_secrets ->", *call("POST", "/admin/secrets",
                                    {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                     "params": {"name": "read_secrets"}}))
