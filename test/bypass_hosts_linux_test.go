package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent"
)

// bypassHostsPy resolves each name of argv[2:] (A, over UDP) from the
// resolver at argv[1], connects to the address answered on port 8443 and
// prints, per name, the address and what the server said, as JSON.
const bypassHostsPy = `
import json, socket, struct, sys
def query(name):
    hdr = struct.pack('>HHHHHH', 0x4242, 0x0100, 1, 0, 0, 0)
    body = b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
    return hdr + body + struct.pack('>HH', 1, 1)
out = {}
for name in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(query(name), (sys.argv[1], 53))
    data, _ = s.recvfrom(4096)
    s.close()
    r = {"rcode": data[3] & 0xf, "answers": struct.unpack('>H', data[6:8])[0]}
    if r["rcode"] == 0 and r["answers"] == 1:
        ip = socket.inet_ntoa(data[-4:])  # one A record, no EDNS0: its rdata ends the message
        r["addr"] = ip
        c = socket.create_connection((ip, 8443), timeout=5)
        got = b""
        while True:
            b = c.recv(4096)
            if not b:
                break
            got += b
        c.close()
        r["data"] = got.decode()
    out[name] = r
print(json.dumps(out))
`

// agent.bypassHosts through the agent's DNS server: a workload resolves
// a bypassed name through the agent, and its connect to the answer goes
// direct (the server sees the workload's own address as the peer, and the
// event says bypass_host with the name), while a name outside the list
// is redirected to the proxy.
func TestAgentBypassHosts(t *testing.T) {
	e := newAgentEnv(t)
	wl, res, other := e.tp.Hosts[0], e.tp.Hosts[1], e.tp.Hosts[2]
	resolver := startTestResolver(t, res, map[string]netip.Addr{
		"api.bypass.test": res.IP4,
		"api.other.test":  other.IP4,
	})
	// Port 8443 on both: each says whom it sees.
	for _, h := range []*Host{res, other} {
		ln := h.Listen(t, netip.AddrPortFrom(h.IP4, 8443))
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "peer %s", c.RemoteAddr())
				c.Close()
			}
		}()
	}
	srv, err := agent.NewDNSServer(agent.DNSOptions{
		// Forwarding goes to the test's own resolver only.
		Upstreams: []netip.AddrPort{netip.AddrPortFrom(res.IP4, 53)},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.opts.DNS = srv
	e.cfg.DNSPort = 15053
	e.cfg.Ports = []string{"80", "443", "8443"}
	e.cfg.BypassHosts = []string{"*.bypass.test"}
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := wl.Exec(ctx, "python3", "-c", bypassHostsPy, res.IP4.String(), "api.bypass.test", "api.other.test")
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := e.cg.Command(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client: %v\n%s", err, errb.String())
	}
	var got map[string]struct {
		Rcode   int    `json:"rcode"`
		Answers int    `json:"answers"`
		Addr    string `json:"addr"`
		Data    string `json:"data"`
	}
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatalf("client output %q: %v", out.String(), err)
	}
	t.Logf("client: %s; resolver asked %v", out.String(), resolver.names())

	b := got["api.bypass.test"]
	if b.Addr != res.IP4.String() {
		t.Fatalf("api.bypass.test: %+v, want %s", b, res.IP4)
	}
	if !strings.HasPrefix(b.Data, "peer "+wl.IP4.String()+":") {
		t.Errorf("connect to the bypassed name's address: server said %q, want the workload's own address %s as the peer", b.Data, wl.IP4)
	}
	dst := netip.AddrPortFrom(res.IP4, 8443)
	ev, ok := e.waitEvent(func(ev agent.Event) bool { return ev.Dst == dst })
	if !ok || ev.Verdict != agent.Direct || ev.Reason != agent.ReasonBypassHost || ev.Host != "api.bypass.test" || ev.Cgroup != e.cg.Path {
		t.Errorf("event for the bypassed name: %+v (found %v), want direct, %s, host api.bypass.test", ev, ok, agent.ReasonBypassHost)
	}

	o := got["api.other.test"]
	odst := netip.AddrPortFrom(other.IP4, 8443)
	if o.Addr != other.IP4.String() || o.Data != "proxied "+odst.String() {
		t.Errorf("api.other.test: %+v, want its connect to %s proxied", o, odst)
	}
	if ev, ok := e.waitEvent(func(ev agent.Event) bool { return ev.Dst == odst }); !ok || ev.Verdict != agent.Redirected {
		t.Errorf("event for the name outside bypassHosts: %+v (found %v), want redirected", ev, ok)
	}
	seen := e.rec.all()
	if len(seen) != 1 || seen[0].Dst.Addr != odst {
		t.Errorf("the proxy saw %+v, want only the connect to %s", seen, odst)
	}
}
