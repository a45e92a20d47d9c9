package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// testResolver is the test's own DNS server on a test host (UDP and TCP
// on port 53 of both its addresses): api.test has an A and an AAAA
// record, each name of extra its A record, anything else is NXDOMAIN. It
// remembers every name it was asked, so a test can tell that a denied
// name never reached it.
type testResolver struct {
	mu    sync.Mutex
	asked []string
}

func (r *testResolver) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.asked)
}

var apiTest4, apiTest6 = netip.MustParseAddr("198.18.200.1"), netip.MustParseAddr("2001:2:0:c8::1")

func startTestResolver(t *testing.T, h *Host, extra map[string]netip.Addr) *testResolver {
	t.Helper()
	r := &testResolver{}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		qq := q.Question[0]
		r.mu.Lock()
		r.asked = append(r.asked, qq.Name)
		r.mu.Unlock()
		a, isExtra := extra[strings.TrimSuffix(qq.Name, ".")]
		switch {
		case isExtra && qq.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: a.AsSlice()})
		case isExtra:
		case qq.Name == "api.test." && qq.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: apiTest4.AsSlice()})
		case qq.Name == "api.test." && qq.Qtype == dns.TypeAAAA:
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 60}, AAAA: apiTest6.AsSlice()})
		case qq.Name != "api.test.":
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	for _, a := range []netip.Addr{h.IP4, h.IP6} {
		ap := netip.AddrPortFrom(a, 53).String()
		var pc net.PacketConn
		var ln net.Listener
		err := h.Do(func() (err error) {
			if pc, err = net.ListenPacket("udp", ap); err != nil {
				return err
			}
			ln, err = net.Listen("tcp", ap)
			return err
		})
		if err != nil {
			t.Fatalf("test resolver on %s: %v", ap, err)
		}
		for _, s := range []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}} {
			started := make(chan struct{})
			s.NotifyStartedFunc = func() { close(started) }
			go func() { _ = s.ActivateAndServe() }()
			<-started
			t.Cleanup(func() { _ = s.Shutdown() })
		}
	}
	return r
}

// dnsClientPy asks the resolver at argv[1] (IPv4) and argv[2] (IPv6)
// for api.test and x.denied.test over unconnected UDP, api.test over
// TCP, and sends a QUIC-like datagram to port 443 of each; it prints
// what it saw as JSON.
const dnsClientPy = `
import errno, json, socket, struct, sys
def query(name, qtype):
    hdr = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
    body = b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
    return hdr + body + struct.pack('>HH', qtype, 1)
out = {}
for fam, addr, qtype in (("4", sys.argv[1], 1), ("6", sys.argv[2], 28)):
    af = socket.AF_INET if fam == "4" else socket.AF_INET6
    for name in ("api.test", "x.denied.test"):
        s = socket.socket(af, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(query(name, qtype), (addr, 53))
        data, src = s.recvfrom(4096)
        out["udp" + fam + " " + name] = {"src": "%s:%d" % (src[0], src[1]), "rcode": data[3] & 0xf, "answers": struct.unpack('>H', data[6:8])[0]}
        s.close()
    t = socket.socket(af, socket.SOCK_STREAM)
    t.settimeout(5)
    t.connect((addr, 53))
    m = query("api.test", qtype)
    t.sendall(struct.pack('>H', len(m)) + m)
    n = struct.unpack('>H', t.recv(2))[0]
    data = b''
    while len(data) < n:
        data += t.recv(n - len(data))
    peer = t.getpeername()
    out["tcp" + fam] = {"src": "%s:%d" % (peer[0], peer[1]), "rcode": data[3] & 0xf, "answers": struct.unpack('>H', data[6:8])[0]}
    t.close()
    u = socket.socket(af, socket.SOCK_DGRAM)
    try:
        u.sendto(b'\xc3quic initial', (addr, 443))
        out["quic" + fam] = "sent"
    except OSError as e:
        out["quic" + fam] = errno.errorcode[e.errno]
print(json.dumps(out))
`

type dnsAnswer struct {
	Src     string `json:"src"`
	Rcode   int    `json:"rcode"`
	Answers int    `json:"answers"`
}

// A selected workload's DNS, to whatever resolver it asks, over UDP and
// TCP, IPv4 and IPv6, is answered by the agent's DNS server: the answer
// comes from the resolver the workload asked, every query is a record
// naming the workload, a denied name is NXDOMAIN and never reaches the
// resolver, the addresses answered are bound to their name for the
// workload, and UDP to port 443 fails with EPERM and never arrives.
func TestAgentDNS(t *testing.T) {
	e := newAgentEnv(t)
	res := e.tp.Hosts[1]
	resolver := startTestResolver(t, res, nil)
	// A QUIC server that must hear nothing.
	var quic []net.PacketConn
	for _, a := range []netip.Addr{res.IP4, res.IP6} {
		err := res.Do(func() error {
			pc, err := net.ListenPacket("udp", netip.AddrPortFrom(a, 443).String())
			quic = append(quic, pc)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { quic[len(quic)-1].Close() })
	}

	e.cfg.RefuseQUIC = true
	srv, recs := e.startDNS(res, "version: 1\ndns:\n  - name: no-denied\n    names: [\"*.denied.test\"]\n    action: deny\n", 100)

	var got map[string]json.RawMessage
	e.runPy(t, true, &got, dnsClientPy, res.IP4.String(), res.IP6.String())
	answer := func(k string) dnsAnswer {
		var a dnsAnswer
		if err := json.Unmarshal(got[k], &a); err != nil {
			t.Fatalf("%s: %s: %v", k, got[k], err)
		}
		return a
	}
	for _, fam := range []struct {
		tag  string
		addr netip.Addr
	}{{"4", res.IP4}, {"6", res.IP6}} {
		from := fam.addr.String() + ":53" // as Python prints it
		for _, k := range []string{"udp" + fam.tag + " api.test", "tcp" + fam.tag} {
			if a := answer(k); a.Src != from || a.Rcode != dns.RcodeSuccess || a.Answers != 1 {
				t.Errorf("%s: %+v, want one answer from %s", k, a, from)
			}
		}
		if a := answer("udp" + fam.tag + " x.denied.test"); a.Rcode != dns.RcodeNameError || a.Src != from {
			t.Errorf("denied name over udp%s: %+v, want NXDOMAIN from %s", fam.tag, a, from)
		}
		var q string
		_ = json.Unmarshal(got["quic"+fam.tag], &q)
		if q != "EPERM" {
			t.Errorf("udp%s to port 443: %s, want EPERM", fam.tag, q)
		}
	}
	for _, n := range resolver.names() {
		if strings.Contains(n, "denied") {
			t.Errorf("the test resolver was asked the denied name %s", n)
		}
	}
	for _, pc := range quic {
		_ = pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, from, err := pc.ReadFrom(make([]byte, 64)); err == nil {
			t.Errorf("a %d-byte datagram to port 443 arrived from %s", n, from)
		}
	}

	// Every query is a record naming the workload's cgroup and process.
	all := recs.all()
	if len(all) < 6 {
		t.Fatalf("%d dns records, want at least 6: %+v", len(all), all)
	}
	for _, r := range all {
		if r.Kind != audit.KindDNS || r.Workload.Cgroup != e.cg.Path || r.Workload.PID == 0 || r.Workload.Comm != "python3" {
			t.Errorf("record without the workload: %+v", r)
		}
		if r.DNSName == "x.denied.test" && (r.Decision != audit.DecisionDeny || r.Rule != "no-denied" || r.Rcode != "NXDOMAIN") {
			t.Errorf("denied record %+v", r)
		}
	}
	id := all[0].Workload
	if names := srv.NamesFor(id, apiTest4); !slices.Equal(names, []string{"api.test"}) {
		t.Errorf("NamesFor(%s) = %v, want [api.test]", apiTest4, names)
	}
	if names := srv.NamesFor(id, apiTest6); !slices.Equal(names, []string{"api.test"}) {
		t.Errorf("NamesFor(%s) = %v, want [api.test]", apiTest6, names)
	}
	if ev, ok := e.waitEvent(func(ev agent.Event) bool { return ev.Reason == agent.ReasonQUIC }); !ok || ev.Verdict != agent.Denied {
		t.Errorf("no quic_refused event: %+v", ev)
	}
}

type dnsRecords struct {
	mu  sync.Mutex
	got []audit.Record
}

func (d *dnsRecords) Record(r *audit.Record) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.got = append(d.got, *r)
}

func (d *dnsRecords) all() []audit.Record {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.got)
}

// startDNS starts e's agent with a DNS server on port 15053 that
// forwards only to the test's resolver on res, under the policy policySrc
// ("" for none), with a cache of cacheSize answers, and selects the test
// cgroup. It returns the server and the records of its answers.
func (e *agentEnv) startDNS(res *Host, policySrc string, cacheSize int) (*agent.DNSServer, *dnsRecords) {
	e.t.Helper()
	o := agent.DNSOptions{Upstreams: []netip.AddrPort{netip.AddrPortFrom(res.IP4, 53)}, CacheSize: cacheSize, Audit: &dnsRecords{}}
	if policySrc != "" {
		eng, err := policy.Parse([]byte(policySrc), "p.yaml")
		if err != nil {
			e.t.Fatal(err)
		}
		o.Policy = &policy.Current{}
		o.Policy.Store(eng)
	}
	srv, err := agent.NewDNSServer(o)
	if err != nil {
		e.t.Fatal(err)
	}
	e.opts.DNS = srv
	e.cfg.DNSPort = 15053
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		e.t.Fatal(err)
	}
	return srv, o.Audit.(*dnsRecords)
}

// dnsEnforcePy, under `sluice run`: plain HTTP by address to argv[1]
// before any lookup (requireResolved refuses it), a burst of long-label
// queries (the exfiltration guard denies them), then the lookup of
// api.test from the resolver at argv[1] and HTTPS to the address it gave.
const dnsEnforcePy = `
import json, os, socket, ssl, struct, sys
ip = sys.argv[1]
def query(name):
    hdr = struct.pack('>HHHHHH', 0x4321, 0x0100, 1, 0, 0, 0)
    body = b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(hdr + body + struct.pack('>HH', 1, 1), (ip, 53))
    data, _ = s.recvfrom(4096)
    s.close()
    return data
def head(sock, host):
    sock.sendall(("GET /x HTTP/1.0\r\nHost: %s\r\n\r\n" % host).encode())
    data = b''
    while True:
        b = sock.recv(4096)
        if not b:
            break
        data += b
    return data.decode(errors="replace")
out = {}
r = head(socket.create_connection((ip, 80), timeout=5), ip)
out["byaddr"] = r.split("\r\n", 1)[0] + " " + r.split("\r\n\r\n", 1)[-1].strip()
out["exfil"] = [query("%s%02d.t.exfil.test" % ("a" * 58, i))[3] & 0xf for i in range(5)]
d = query("api.test")
out["rcode"] = d[3] & 0xf
addr = socket.inet_ntoa(d[-4:])
out["addr"] = addr
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
t = ctx.wrap_socket(socket.create_connection((addr, 443), timeout=5), server_hostname="api.test")
out["https"] = head(t, "api.test").split("\r\n", 1)[0]
print(json.dumps(out))
`

// Under `sluice run` with requireResolved and the exfiltration guard in
// enforce mode: plain HTTP to an address the workload never resolved is
// refused (403, rule require-resolved) without reaching anything; a
// burst of long-label queries is denied and recorded as exfiltration;
// HTTPS to the address the workload resolved through the agent goes
// through, and its record carries the name (dns_name).
func TestRunDNSRequireResolvedAndExfil(t *testing.T) {
	python := RequireTool(t, "python3")
	e := newRunEnv(t)
	resolver := startTestResolver(t, e.api, map[string]netip.Addr{"api.test": e.api.IP4})
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	// DNS goes to the test's own resolver only.
	cfg = append(cfg, fmt.Sprintf("agent:\n  dns:\n    upstreams: [%s]\n    exfil: {mode: enforce, maxLabelLength: 52}\n", e.api.IP4)...)
	if err := os.WriteFile(e.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.policy, []byte(e2ePolicy+"resolution: {requireResolved: true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := e.run(t, python, "-c", dnsEnforcePy, e.api.IP4.String())
	if code != 0 {
		t.Fatalf("exit %d %q\n%s", code, out, errOut)
	}
	var got struct {
		ByAddr string `json:"byaddr"`
		Exfil  []int  `json:"exfil"`
		Rcode  int    `json:"rcode"`
		Addr   string `json:"addr"`
		HTTPS  string `json:"https"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output %q: %v\n%s", out, err, errOut)
	}
	if !strings.Contains(got.ByAddr, " 403 ") || !strings.Contains(got.ByAddr, policy.RuleRequireResolved) {
		t.Errorf("plain HTTP by address: %q, want 403 by %s", got.ByAddr, policy.RuleRequireResolved)
	}
	for i, rc := range got.Exfil {
		if rc != dns.RcodeNameError {
			t.Errorf("long-label query %d: rcode %d, want NXDOMAIN (denied)", i, rc)
		}
	}
	if got.Rcode != dns.RcodeSuccess || got.Addr != e.api.IP4.String() || !strings.Contains(got.HTTPS, " 200 ") {
		t.Errorf("resolved then HTTPS: %+v, want %s and 200", got, e.api.IP4)
	}
	for _, n := range resolver.names() {
		if strings.Contains(n, "exfil") {
			t.Errorf("the resolver was asked the flagged name %s", n)
		}
	}
	var exfil, refused, named int
	for _, r := range e.records(t) {
		switch {
		case r["kind"] == audit.KindDNS && r["reason"] == audit.ReasonDNSExfilLabelLength && r["decision"] == audit.DecisionDeny:
			exfil++
		case r["rule"] == policy.RuleRequireResolved && r["decision"] == audit.DecisionDeny && r["reason"] == audit.ReasonUnresolved:
			refused++
		case r["kind"] == audit.KindHTTP && r["dns_name"] == "api.test" && r["status"] == float64(200):
			named++
		}
	}
	if exfil != 5 || refused == 0 || named != 1 {
		t.Errorf("records: %d exfiltration denials (want 5), %d require-resolved refusals (want some), %d HTTPS records with dns_name api.test (want 1)", exfil, refused, named)
	}
}

// A workload's own resolver library goes through the agent too: Python's
// socket.getaddrinfo (glibc, reading the resolv.conf that `ip netns exec`
// bind-mounts for the workload's namespace, which names the test's
// resolver) gets api.test's address from the agent's DNS server, which
// records the query and binds the name for the workload.
func TestAgentDNSGetaddrinfo(t *testing.T) {
	e := newAgentEnv(t)
	res := e.tp.Hosts[1]
	startTestResolver(t, res, nil)
	wl := e.tp.Hosts[0]
	conf := filepath.Join("/etc/netns", wl.Name, "resolv.conf") // the topology's file
	if err := os.WriteFile(conf, []byte("nameserver "+res.IP4.String()+"\noptions attempts:1 timeout:3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv, recs := e.startDNS(res, "", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := wl.Exec(ctx, "python3", "-c", `import socket; print(socket.getaddrinfo("api.test", 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])`)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := e.cg.Command(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("getaddrinfo: %v\n%s", err, errb.String())
	}
	if got := strings.TrimSpace(out.String()); got != apiTest4.String() {
		t.Fatalf("getaddrinfo(api.test) = %q, want %s", got, apiTest4)
	}
	var rec *audit.Record
	for _, r := range recs.all() {
		if r.DNSName == "api.test" && r.QType == "A" {
			rec = &r
		}
	}
	if rec == nil || rec.Workload.Comm != "python3" || rec.Workload.Cgroup != e.cg.Path || rec.Decision != audit.DecisionAllow {
		t.Fatalf("no record of the lookup naming python3 in %s: %+v", e.cg.Path, recs.all())
	}
	if names := srv.NamesFor(rec.Workload, apiTest4); !slices.Equal(names, []string{"api.test"}) {
		t.Errorf("NamesFor(%s) = %v, want [api.test]", apiTest4, names)
	}
}

// runPy runs the Python program script with args on the workload host,
// in the selected cgroup when inCgroup, and decodes the JSON it prints
// into out.
func (e *agentEnv) runPy(t *testing.T, inCgroup bool, out any, script string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := e.tp.Hosts[0].Exec(ctx, append([]string{"python3", "-c", script}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := func() {}
	if inCgroup {
		done = e.cg.Command(t, cmd)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("python client: %v\n%s", err, stderr.String())
	}
	if err := json.Unmarshal([]byte(stdout.String()), out); err != nil {
		t.Fatalf("client output %q: %v", stdout.String(), err)
	}
}

// dnsTCPFromPortPy asks the resolver at argv[1]:argv[3] for api.test
// over TCP from source port argv[2] and prints its pid and the answer's
// rcode; with argv[4] "silent" it connects and closes without a query
// (rcode -1).
const dnsTCPFromPortPy = `
import json, os, socket, struct, sys
hdr = struct.pack('>HHHHHH', 0x4242, 0x0100, 1, 0, 0, 0)
m = hdr + b'\x03api\x04test\x00' + struct.pack('>HH', 1, 1)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", int(sys.argv[2])))
t.settimeout(5)
t.connect((sys.argv[1], int(sys.argv[3])))
if len(sys.argv) > 4 and sys.argv[4] == "silent":
    t.close()
    print(json.dumps({"pid": os.getpid(), "rcode": -1}))
    sys.exit(0)
t.sendall(struct.pack('>H', len(m)) + m)
n = struct.unpack('>H', t.recv(2))[0]
data = b''
while len(data) < n:
    data += t.recv(n - len(data))
t.close()
print(json.dumps({"pid": os.getpid(), "rcode": data[3] & 0xf}))
`

// A TCP connection to the DNS server leaves its sender's origin in the
// kernel's map (sockops keeps it past the close, for connections the
// proxy accepts late); the agent's DNS server takes it out as it accepts
// the connection, so a process outside every selected cgroup that later
// connects straight to the DNS port from the same address and port is
// not taken for the workload: its query is refused and no record names
// the workload for it. The workload's connection may have asked a query
// or closed without one.
func TestAgentDNSTCPOriginNotInherited(t *testing.T) {
	e := newAgentEnv(t)
	res := e.tp.Hosts[1]
	startTestResolver(t, res, nil)
	_, recs := e.startDNS(res, "version: 1\n", 100)
	query := func(inCgroup bool, dst string, dport uint16, port, mode string) (pid, rcode int) {
		var r struct{ PID, Rcode int }
		e.runPy(t, inCgroup, &r, dnsTCPFromPortPy, dst, port, fmt.Sprint(dport), mode)
		return r.PID, r.Rcode
	}
	for _, c := range []struct {
		name, port, mode string
		wantRcode        int
	}{
		{"after a query", "41234", "query", dns.RcodeSuccess},
		{"after a connection without a query", "41236", "silent", -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(recs.all())
			victim, rcode := query(true, res.IP4.String(), 53, c.port, c.mode)
			if rcode != c.wantRcode {
				t.Fatalf("the workload's connection: rcode %d, want %d", rcode, c.wantRcode)
			}
			if c.mode == "silent" {
				victim = -1 // no query, no record of its own
				// The DNS server accepts the connection after the
				// workload closed it: give it the time.
				time.Sleep(200 * time.Millisecond)
			}
			// The attacker: not in the selected cgroup, same address
			// and port, straight to the agent's DNS port.
			attacker, rcode := query(false, e.cfg.InterceptIPv4.String(), e.cfg.DNSPort, c.port, "query")
			if rcode != dns.RcodeRefused {
				t.Errorf("the unselected process's query: rcode %d, want REFUSED", rcode)
			}
			for _, r := range recs.all()[before:] {
				if r.Workload.PID == victim && r.Workload.Cgroup == e.cg.Path {
					victim = -1 // the workload's own record, once
					continue
				}
				if r.Workload.Cgroup == e.cg.Path || r.Workload.PID != 0 {
					t.Errorf("a record names a workload for the query of pid %d: %+v", attacker, r.Workload)
				}
			}
			if victim != -1 {
				t.Errorf("no record of the workload's own query: %+v", recs.all()[before:])
			}
		})
	}
}

// dnsUDPFromPortPy sends argv[6] over UDP from source port argv[2] to
// argv[1]:argv[3], argv[5] times in turn with one message id (a
// retransmit), on an unconnected socket (argv[4] "sendto") or a connected
// one ("connect"), over IPv6 when argv[1] is an IPv6 address, and prints
// its pid and the rcodes it got (-1: no answer). argv[6] is "query"
// (api.test A), "response" (the same with the QR bit set) or "badbody"
// (a header asking one question, and half a name).
const dnsUDPFromPortPy = `
import json, os, socket, struct, sys
flags = {"query": 0x0100, "response": 0x8100, "badbody": 0x0100}[sys.argv[6]]
m = struct.pack('>HHHHHH', 0x4242, flags, 1, 0, 0, 0)
m += b'\x03ap' if sys.argv[6] == "badbody" else b'\x03api\x04test\x00' + struct.pack('>HH', 1, 1)
dst = (sys.argv[1], int(sys.argv[3]))
v6 = ":" in sys.argv[1]
u = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
u.bind(("::" if v6 else "0.0.0.0", int(sys.argv[2])))
u.settimeout(2)
if sys.argv[4] == "connect":
    u.connect(dst)
rcodes = []
for _ in range(int(sys.argv[5])):
    if sys.argv[4] == "connect":
        u.send(m)
    else:
        u.sendto(m, dst)
    try:
        rcodes.append(u.recv(4096)[3] & 0xf)
    except socket.timeout:
        rcodes.append(-1)
u.close()
print(json.dumps({"pid": os.getpid(), "rcodes": rcodes}))
`

// A UDP DNS query leaves its sender's origin in the kernel's map, keyed
// by the sender's address, port and message id (egress writes it for
// every datagram); the agent's DNS server takes it out as it answers. So
// a process outside every selected cgroup that later sends from the same
// address and port, with the same message id, straight to the DNS port
// is not taken for the workload: its query is refused and no record
// names the workload for it (within 2 s of the workload's query it is
// taken for another copy of that query, and dropped unanswered: see
// agent's dnsRecentTTL). Covered: both ways a workload's UDP query
// is steered (sendmsg for an unconnected socket, connect), over IPv4 and
// IPv6; a response (ignored, and no origin is written for it); and a
// query whose body does not parse (the DNS library answers FORMERR
// itself, without a handler).
func TestAgentDNSUDPOriginNotInherited(t *testing.T) {
	e := newAgentEnv(t)
	res := e.tp.Hosts[1]
	startTestResolver(t, res, nil)
	_, recs := e.startDNS(res, "version: 1\n", 100)
	query := func(inCgroup bool, dst string, sport, dport uint16, mode string, n int, msg string) (pid int, rcodes []int) {
		var r struct {
			PID    int
			Rcodes []int
		}
		e.runPy(t, inCgroup, &r, dnsUDPFromPortPy, dst, fmt.Sprint(sport), fmt.Sprint(dport), mode, fmt.Sprint(n), msg)
		return r.PID, r.Rcodes
	}
	victims := map[int]int{} // pid: records still expected
	var attackers []int
	var later []func()
	for i, c := range []struct {
		mode, msg string
		ip6       bool
		rcodes    []int // the workload's
	}{
		// The workload asks twice with one id: the retransmit is
		// named again (egress writes its origin again).
		{"sendto", "query", false, []int{dns.RcodeSuccess, dns.RcodeSuccess}},
		{"connect", "query", false, []int{dns.RcodeSuccess, dns.RcodeSuccess}},
		{"sendto", "query", true, []int{dns.RcodeSuccess, dns.RcodeSuccess}},
		{"connect", "query", true, []int{dns.RcodeSuccess, dns.RcodeSuccess}},
		{"sendto", "response", false, []int{-1}},
		{"sendto", "badbody", false, []int{dns.RcodeFormatError}},
	} {
		name := c.mode + " " + c.msg
		resolver, dnsAddr := res.IP4.String(), e.cfg.InterceptIPv4.String()
		if c.ip6 {
			name += " ipv6"
			resolver, dnsAddr = res.IP6.String(), e.cfg.InterceptIPv6.String()
		}
		sport := uint16(41240 + i)
		victim, rcodes := query(true, resolver, sport, 53, c.mode, len(c.rcodes), c.msg)
		if !slices.Equal(rcodes, c.rcodes) {
			t.Errorf("%s: the workload's rcodes %v, want %v", name, rcodes, c.rcodes)
		}
		if c.msg == "query" {
			victims[victim] = len(c.rcodes)
		}
		// The attacker: not in the selected cgroup, same address, port
		// and message id, straight to the agent's DNS port. Right after
		// a query the DNS server took the origin of, it passes for
		// another copy of that query: no answer, and no record.
		want := []int{dns.RcodeRefused}
		if c.msg == "query" {
			want = []int{-1}
		}
		attacker, rcodes := query(false, dnsAddr, sport, e.cfg.DNSPort, "sendto", 1, "query")
		if !slices.Equal(rcodes, want) {
			t.Errorf("%s: the unselected process's query at once: rcodes %v, want %v", name, rcodes, want)
		}
		attackers = append(attackers, attacker)
		later = append(later, func() {
			attacker, rcodes := query(false, dnsAddr, sport, e.cfg.DNSPort, "sendto", 1, "query")
			if !slices.Equal(rcodes, []int{dns.RcodeRefused}) {
				t.Errorf("%s: the unselected process's query later: rcodes %v, want REFUSED", name, rcodes)
			}
			attackers = append(attackers, attacker)
		})
	}
	// Past the time copies of one query are told apart.
	time.Sleep(2*time.Second + 2*time.Second + 100*time.Millisecond)
	for _, f := range later {
		f()
	}
	for _, r := range recs.all() {
		if victims[r.Workload.PID] > 0 && r.Workload.Cgroup == e.cg.Path {
			victims[r.Workload.PID]-- // the workload's own records
			continue
		}
		if r.Workload.Cgroup == e.cg.Path || r.Workload.PID != 0 {
			t.Errorf("a record names a workload for a query of the unselected processes %v: %+v", attackers, r.Workload)
		}
	}
	for pid, n := range victims {
		if n != 0 {
			t.Errorf("workload pid %d: %d of its records missing: %+v", pid, n, recs.all())
		}
	}
}
