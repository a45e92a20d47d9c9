package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// fakeUpstream is a resolver on loopback: api.example has an A and an
// AAAA record, big.example more TXT than fits 512 bytes, anything else
// is NXDOMAIN. It counts the questions it was asked.
type fakeUpstream struct {
	addr  netip.AddrPort
	asked atomic.Int64
}

func startUpstream(t testing.TB) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		u.asked.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		switch {
		case q.Name == "api.example." && q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, mustRR(t, "api.example. 60 IN A 192.0.2.10"))
		case q.Name == "api.example." && q.Qtype == dns.TypeAAAA:
			m.Answer = append(m.Answer, mustRR(t, "api.example. 60 IN AAAA 2001:db8::10"))
		case q.Name == "big.example.":
			for i := range 40 {
				m.Answer = append(m.Answer, mustRR(t, fmt.Sprintf("big.example. 60 IN TXT \"record number %02d of a long answer\"", i)))
			}
		default:
			m.Rcode = dns.RcodeNameError
		}
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), false)
		}
		if _, ok := w.RemoteAddr().(*net.UDPAddr); ok {
			m.Truncate(clientUDPSize(r))
		}
		_ = w.WriteMsg(m)
	})
	pc, ln := listenUDPTCP(t)
	u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	serve(t, &dns.Server{PacketConn: pc, Handler: h}, &dns.Server{Listener: ln, Handler: h})
	return u
}

// mustRR parses a record the test wrote; it runs in the fake upstream's
// handler goroutines, so it panics rather than failing a test.
func mustRR(_ testing.TB, s string) dns.RR {
	rr, err := dns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return rr
}

func serve(t testing.TB, srvs ...*dns.Server) {
	t.Helper()
	for _, s := range srvs {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { _ = s.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = s.Shutdown() })
	}
}

// records collects audit records.
type records struct {
	mu  sync.Mutex
	all []audit.Record
}

func (r *records) Record(rec *audit.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, *rec)
}

func (r *records) last(t *testing.T) audit.Record {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.all) == 0 {
		t.Fatal("no audit record")
	}
	return r.all[len(r.all)-1]
}

// agentID is the workload every test query comes from.
var agentID = workload.Identity{PID: 42, Comm: "agent", Cgroup: "/agents/a1"}

// startDNS serves a DNSServer on loopback (UDP and TCP) in front of up,
// with the policy text pol (empty: none).
func startDNS(t *testing.T, up *fakeUpstream, pol string, mod func(*DNSOptions)) (*DNSServer, string, *records) {
	t.Helper()
	recs := &records{}
	o := DNSOptions{
		Upstreams: []netip.AddrPort{up.addr},
		CacheSize: 100,
		Audit:     recs,
		Identify: func(peer netip.AddrPort, network string) (workload.Identity, error) {
			id := agentID
			id.Client = peer
			return id, nil
		},
	}
	if pol != "" {
		e, err := policy.Parse([]byte(pol), "p.yaml")
		if err != nil {
			t.Fatal(err)
		}
		o.Policy = &policy.Current{}
		o.Policy.Store(e)
	}
	if mod != nil {
		mod(&o)
	}
	s, err := NewDNSServer(o)
	if err != nil {
		t.Fatal(err)
	}
	pc, ln := listenUDPTCP(t)
	serve(t, &dns.Server{PacketConn: pc, Handler: s}, &dns.Server{Listener: ln, Handler: s})
	return s, pc.LocalAddr().String(), recs
}

func ask(t *testing.T, network, addr, name string, qtype uint16, edns uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns != 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: network, Timeout: 3 * time.Second, UDPSize: max(edns, dns.MinMsgSize)}
	r, _, err := c.ExchangeContext(context.Background(), m, addr)
	if err != nil && !(network == "udp" && r != nil && r.Truncated) {
		t.Fatalf("%s query %s: %v", network, name, err)
	}
	return r
}

// An allowed name is forwarded over UDP and TCP, answered, recorded with
// its addresses, and bound to them for the workload.
func TestDNSForwardsAndRecords(t *testing.T) {
	up := startUpstream(t)
	s, addr, recs := startDNS(t, up, "", nil)
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, network, addr, "api.example.", dns.TypeA, 0)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.10" {
			t.Fatalf("%s answer: %v", network, r)
		}
		if r.IsEdns0() != nil {
			t.Errorf("%s: answer has an OPT record the client did not send", network)
		}
	}
	rec := recs.last(t)
	if rec.Kind != audit.KindDNS || rec.DNSName != "api.example" || rec.QType != "A" || rec.Rcode != "NOERROR" ||
		rec.Decision != audit.DecisionAllow || rec.Workload.Cgroup != agentID.Cgroup ||
		!slices.Equal(rec.Answers, []netip.Addr{netip.MustParseAddr("192.0.2.10")}) {
		t.Errorf("record %+v", rec)
	}
	if got := s.NamesFor(agentID, netip.MustParseAddr("192.0.2.10")); !slices.Equal(got, []string{"api.example"}) {
		t.Errorf("NamesFor(agent, 192.0.2.10) = %v", got)
	}
	other := workload.Identity{Cgroup: "/other"}
	if got := s.NamesFor(other, netip.MustParseAddr("192.0.2.10")); got != nil {
		t.Errorf("another workload's NamesFor = %v, want none: bindings are per workload", got)
	}
	if n := up.asked.Load(); n != 1 {
		t.Errorf("upstream asked %d times, want 1 (the second answer comes from the cache)", n)
	}
}

// A denied name is answered NXDOMAIN (or REFUSED) without asking the
// upstream, and recorded with its rule.
func TestDNSDeniedName(t *testing.T) {
	pol := "version: 1\ndns:\n  - name: no-paste\n    workloads: {comm: [agent]}\n    names: [\"*.paste.example\"]\n    action: deny\n"
	for _, tt := range []struct {
		rcode int
		name  string
	}{{0, "NXDOMAIN"}, {dns.RcodeRefused, "REFUSED"}} {
		up := startUpstream(t)
		_, addr, recs := startDNS(t, up, pol, func(o *DNSOptions) { o.DenyRcode = tt.rcode })
		r := ask(t, "udp", addr, "x.paste.example.", dns.TypeA, 1232)
		if dns.RcodeToString[r.Rcode] != tt.name {
			t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], tt.name)
		}
		if n := up.asked.Load(); n != 0 {
			t.Errorf("upstream asked %d times about a denied name", n)
		}
		rec := recs.last(t)
		if rec.Decision != audit.DecisionDeny || rec.Rule != "no-paste" || rec.Reason != audit.ReasonDNSDenied || rec.Rcode != tt.name {
			t.Errorf("record %+v", rec)
		}
	}
}

// An answer larger than the client's UDP size is truncated (TC set), and
// the client gets it whole over TCP; EDNS0 raises the limit.
func TestDNSTruncation(t *testing.T) {
	up := startUpstream(t)
	_, addr, _ := startDNS(t, up, "", nil)
	r := ask(t, "udp", addr, "big.example.", dns.TypeTXT, 0)
	if !r.Truncated {
		t.Errorf("a 512-byte client got an untruncated answer of %d records", len(r.Answer))
	}
	r = ask(t, "tcp", addr, "big.example.", dns.TypeTXT, 0)
	if r.Truncated || len(r.Answer) != 40 {
		t.Errorf("tcp: truncated %v, %d records, want 40", r.Truncated, len(r.Answer))
	}
	r = ask(t, "udp", addr, "big.example.", dns.TypeTXT, 4096)
	if r.Truncated || len(r.Answer) != 40 || r.IsEdns0() == nil {
		t.Errorf("edns0 4096: truncated %v, %d records, opt %v", r.Truncated, len(r.Answer), r.IsEdns0())
	}
}

// A sender the kernel did not name is refused; an unreachable upstream
// is SERVFAIL, recorded as an error.
func TestDNSUnknownSenderAndDeadUpstream(t *testing.T) {
	up := startUpstream(t)
	_, addr, recs := startDNS(t, up, "", func(o *DNSOptions) {
		o.Identify = func(netip.AddrPort, string) (workload.Identity, error) {
			return workload.Identity{}, errNoOrigin
		}
	})
	if r := ask(t, "udp", addr, "api.example.", dns.TypeA, 0); r.Rcode != dns.RcodeRefused {
		t.Errorf("unknown sender: rcode %s", dns.RcodeToString[r.Rcode])
	}
	if rec := recs.last(t); rec.Reason != audit.ReasonDNSNoOrigin || rec.Rcode != "REFUSED" {
		t.Errorf("record %+v", rec)
	}

	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	dead.Close()
	_, addr, recs = startDNS(t, &fakeUpstream{addr: deadAddr}, "", func(o *DNSOptions) { o.Timeout = 300 * time.Millisecond })
	if r := ask(t, "udp", addr, "api.example.", dns.TypeA, 0); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("dead upstream: rcode %s", dns.RcodeToString[r.Rcode])
	}
	if rec := recs.last(t); rec.Decision != audit.DecisionError || rec.Reason != audit.ReasonDNSUpstream || rec.Error == "" {
		t.Errorf("record %+v", rec)
	}
}

// A sender nobody named cannot fill the agent's log: every one of its
// queries is refused and audited, but the warning goes out once, and
// the next one (a second later) says how many were held back.
func TestDNSUnknownSenderFloodLogsOnce(t *testing.T) {
	var logged bytes.Buffer
	var mu sync.Mutex
	up := startUpstream(t)
	_, addr, recs := startDNS(t, up, "", func(o *DNSOptions) {
		o.Log = slog.New(slog.NewJSONHandler(lockedWriter{&mu, &logged}, nil))
		o.Identify = func(netip.AddrPort, string) (workload.Identity, error) {
			return workload.Identity{}, errNoOrigin
		}
	})
	const queries = 200
	for range queries {
		if r := ask(t, "udp", addr, "api.example.", dns.TypeA, 0); r.Rcode != dns.RcodeRefused {
			t.Fatalf("unknown sender: rcode %s", dns.RcodeToString[r.Rcode])
		}
	}
	recs.mu.Lock()
	audited := len(recs.all)
	recs.mu.Unlock()
	if audited != queries {
		t.Errorf("%d queries audited, want %d", audited, queries)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(logged.String(), `"msg":"dns query without origin"`); n != 1 {
		t.Errorf("%d warnings for %d queries within a second, want 1:\n%s", n, queries, logged.String())
	}
}

// lockedWriter serializes writes to w (slog handlers write from the DNS
// server's goroutines).
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// The cache ages TTLs and forgets an answer when its TTL runs out; a
// binding outlives a short TTL a little, then goes.
func TestDNSCacheAndBindingExpire(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	up := startUpstream(t)
	s, addr, _ := startDNS(t, up, "", func(o *DNSOptions) { o.Now = clock })
	ask(t, "udp", addr, "api.example.", dns.TypeA, 0)
	advance(20 * time.Second)
	r := ask(t, "udp", addr, "api.example.", dns.TypeA, 0)
	if ttl := r.Answer[0].Header().Ttl; ttl != 40 {
		t.Errorf("cached TTL %d after 20s of 60, want 40", ttl)
	}
	advance(41 * time.Second)
	ask(t, "udp", addr, "api.example.", dns.TypeA, 0)
	if n := up.asked.Load(); n != 2 {
		t.Errorf("upstream asked %d times, want 2 (once more after the TTL)", n)
	}
	ip := netip.MustParseAddr("192.0.2.10")
	if got := s.NamesFor(agentID, ip); len(got) != 1 {
		t.Errorf("binding gone early: %v", got)
	}
	advance(61 * time.Second)
	if got := s.NamesFor(agentID, ip); got != nil {
		t.Errorf("binding outlived its TTL: %v", got)
	}
}

// Malformed queries get FORMERR, never a panic: miekg's server refuses
// them before the handler, and the handler itself answers and records
// what reaches it anyway.
func TestDNSMalformed(t *testing.T) {
	up := startUpstream(t)
	s, addr, recs := startDNS(t, up, "", nil)
	m := new(dns.Msg)
	m.Id = 7
	m.Question = []dns.Question{{Name: "a.example.", Qtype: dns.TypeA, Qclass: dns.ClassINET}, {Name: "b.example.", Qtype: dns.TypeA, Qclass: dns.ClassINET}}
	r, err := dns.Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: rcode %s", dns.RcodeToString[r.Rcode])
	}
	w := &nullWriter{peer: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}}
	s.Answer(context.Background(), w, m, &agentID)
	if w.out == nil || w.out.Rcode != dns.RcodeFormatError || w.out.Id != 7 {
		t.Errorf("handler answer %v", w.out)
	}
	if rec := recs.last(t); rec.Reason != audit.ReasonDNSMalformed || rec.Decision != audit.DecisionDeny {
		t.Errorf("record %+v", rec)
	}
}

// nullWriter is a dns.ResponseWriter that keeps what is written.
type nullWriter struct {
	peer net.Addr
	out  *dns.Msg
}

func (w *nullWriter) LocalAddr() net.Addr         { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (w *nullWriter) RemoteAddr() net.Addr        { return w.peer }
func (w *nullWriter) WriteMsg(m *dns.Msg) error   { w.out = m; return nil }
func (w *nullWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *nullWriter) Close() error                { return nil }
func (w *nullWriter) TsigStatus() error           { return nil }
func (w *nullWriter) TsigTimersOnly(bool)         {}
func (w *nullWriter) Hijack()                     {}

// FuzzDNSAnswer feeds arbitrary messages to the server's message path
// (policy, cache, bindings, truncation) in front of a fake upstream: it
// must answer every message it can unpack, with the client's id, and
// never panic.
func FuzzDNSAnswer(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
		edns  bool
	}{{"api.example.", dns.TypeA, false}, {"x.paste.example.", dns.TypeAAAA, true}, {"big.example.", dns.TypeTXT, true}, {".", dns.TypeANY, false}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if q.edns {
			m.SetEdns0(1232, true)
		}
		b, _ := m.Pack()
		f.Add(b)
	}
	e, err := policy.Parse([]byte("version: 1\ndns:\n  - {name: d, names: [\"*.paste.example\"], action: deny}\n"), "p.yaml")
	if err != nil {
		f.Fatal(err)
	}
	cur := &policy.Current{}
	cur.Store(e)
	up := startUpstream(f)
	s, err := NewDNSServer(DNSOptions{Upstreams: []netip.AddrPort{up.addr}, CacheSize: 10, Policy: cur, Timeout: 100 * time.Millisecond})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			return
		}
		w := &nullWriter{peer: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}}
		s.Answer(context.Background(), w, m, &agentID)
		if w.out == nil || w.out.Id != m.Id {
			t.Fatalf("no answer with id %d: %v", m.Id, w.out)
		}
		if _, err := w.out.Pack(); err != nil {
			t.Fatalf("answer does not pack: %v\n%v", err, w.out)
		}
	})
}

// listenUDPTCP listens on one loopback port over UDP and TCP, trying
// other ports while the TCP side of the one UDP picked is taken.
func listenUDPTCP(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	var err error
	for range 20 {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			break
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			return pc, ln
		}
		pc.Close()
	}
	t.Fatal(err)
	return nil, nil
}
