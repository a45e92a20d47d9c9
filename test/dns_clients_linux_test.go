package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// goResolve is the test binary re-executed as a Go client (TestMain, on
// SLUICE_E2E_RESOLVE="ipv4,ipv6" of the test resolver) with Go's own
// resolver (GODEBUG=netdns=go and PreferGo: no cgo, no getaddrinfo): the
// system resolver (resolv.conf), then each resolver address over UDP and
// TCP for api.test (A and AAAA) and x.denied.test. It prints what it got
// as JSON.
func goResolve(servers string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := map[string]string{}
	lookup := func(key string, r *net.Resolver, network, name string) {
		addrs, err := r.LookupNetIP(ctx, network, name)
		var de *net.DNSError
		switch {
		case errors.As(err, &de) && de.IsNotFound:
			out[key] = "NXDOMAIN"
		case err != nil:
			out[key] = "error: " + err.Error()
		default:
			out[key] = fmt.Sprint(addrs)
		}
	}
	sys := &net.Resolver{PreferGo: true}
	lookup("system ip4", sys, "ip4", "api.test")
	lookup("system ip6", sys, "ip6", "api.test")
	for _, s := range strings.Split(servers, ",") {
		for _, proto := range []string{"udp", "tcp"} {
			server := netip.AddrPortFrom(netip.MustParseAddr(s), 53).String()
			r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, proto, server)
			}}
			lookup(proto+" "+s+" ip4", r, "ip4", "api.test")
			lookup(proto+" "+s+" ip6", r, "ip6", "api.test")
			lookup(proto+" "+s+" denied", r, "ip4", "x.denied.test")
		}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	return 0
}

// nodeDNS: dns.lookup (getaddrinfo on libuv's pool, resolv.conf) for
// api.test in both families, then a dns.Resolver (c-ares) asking each
// address of the test resolver (argv) for api.test's A and AAAA and
// x.denied.test.
const nodeDNS = `
const dns = require('dns');
const out = {};
(async () => {
  out['lookup4'] = (await dns.promises.lookup('api.test', {family: 4})).address;
  out['lookup6'] = (await dns.promises.lookup('api.test', {family: 6})).address;
  for (const s of process.argv.slice(1)) {
    const r = new dns.promises.Resolver({timeout: 5000, tries: 1});
    r.setServers([s]);
    out['resolve4 ' + s] = (await r.resolve4('api.test')).join(',');
    out['resolve6 ' + s] = (await r.resolve6('api.test')).join(',');
    try { await r.resolve4('x.denied.test'); out['denied ' + s] = 'answered'; } catch (e) { out['denied ' + s] = e.code; }
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
`

// Real resolver clients in a selected workload — dig (UDP and +tcp, A and
// AAAA, to both addresses of the test resolver), Node (dns.lookup and
// c-ares' dns.Resolver) and Go's pure resolver (no cgo) — each get their
// answer through the agent's DNS server: the reply comes from the
// resolver they asked, a record names their process, a denied name is
// NXDOMAIN and never reaches the test resolver. (sendto of UDP to a
// kernel-denied address failing with EPERM is TestAgentRawPacketsDenied's
// "udp" cases, both families.)
func TestAgentDNSClients(t *testing.T) {
	dig := RequireTool(t, "dig")
	node := RequireTool(t, "node")
	e := newAgentEnv(t)
	res, wl := e.tp.Hosts[1], e.tp.Hosts[0]
	resolver := startTestResolver(t, res, nil)
	conf := filepath.Join("/etc/netns", wl.Name, "resolv.conf") // the topology's file
	if err := os.WriteFile(conf, []byte("nameserver "+res.IP4.String()+"\noptions attempts:1 timeout:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, recs := e.startDNS(res, "version: 1\ndns:\n  - name: no-denied\n    names: [\"*.denied.test\"]\n    action: deny\n", 0)
	run := func(env []string, argv ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := wl.Exec(ctx, argv...)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		done := e.cg.Command(t, cmd)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%s: %v\n%s%s", strings.Join(argv, " "), err, out.String(), errb.String())
		}
		return out.String()
	}
	// recordBy reports whether the agent recorded a query for name of
	// qtype by the program exe in the workload's cgroup (by its
	// executable: comm is the sending thread's, dig's "isc-net-0000").
	recordBy := func(exe, name, qtype, decision string) bool {
		if p, err := filepath.EvalSymlinks(exe); err == nil {
			exe = p
		}
		return slices.ContainsFunc(recs.all(), func(r audit.Record) bool {
			return r.Kind == audit.KindDNS && r.Workload.Exe == exe && r.Workload.Cgroup == e.cg.Path && r.Workload.PID != 0 &&
				r.DNSName == name && r.QType == qtype && r.Decision == decision
		})
	}

	t.Run("dig", func(t *testing.T) {
		status := regexp.MustCompile(`status: ([A-Z]+),`)
		server := regexp.MustCompile(`;; SERVER: ([0-9a-f.:]+)#53\(`)
		for _, a := range []netip.Addr{res.IP4, res.IP6} {
			for _, q := range []struct{ name, qtype, want, status string }{
				{"api.test", "A", apiTest4.String(), "NOERROR"},
				{"api.test", "AAAA", apiTest6.String(), "NOERROR"},
				{"x.denied.test", "A", "", "NXDOMAIN"},
			} {
				for _, tcp := range []string{"+notcp", "+tcp"} {
					out := run(nil, dig, "+tries=1", "+time=5", tcp, "@"+a.String(), q.name, q.qtype)
					st, sv := status.FindStringSubmatch(out), server.FindStringSubmatch(out)
					if st == nil || st[1] != q.status || sv == nil || sv[1] != a.String() {
						t.Errorf("dig %s @%s %s %s: want %s from %s:\n%s", tcp, a, q.name, q.qtype, q.status, a, out)
					}
					if q.want != "" && !strings.Contains(out, "\t"+q.want+"\n") {
						t.Errorf("dig %s @%s %s %s: no answer %s:\n%s", tcp, a, q.name, q.qtype, q.want, out)
					}
				}
			}
		}
		if !recordBy(dig, "api.test", "A", audit.DecisionAllow) || !recordBy(dig, "api.test", "AAAA", audit.DecisionAllow) ||
			!recordBy(dig, "x.denied.test", "A", audit.DecisionDeny) {
			t.Errorf("dig's queries are not all recorded naming dig: %+v", recs.all())
		}
	})

	t.Run("node", func(t *testing.T) {
		out := run(nil, node, "-e", nodeDNS, "--", res.IP4.String(), res.IP6.String())
		var got map[string]string
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("node output %q: %v", out, err)
		}
		want := map[string]string{"lookup4": apiTest4.String(), "lookup6": apiTest6.String()}
		for _, a := range []netip.Addr{res.IP4, res.IP6} {
			want["resolve4 "+a.String()] = apiTest4.String()
			want["resolve6 "+a.String()] = apiTest6.String()
			want["denied "+a.String()] = "ENOTFOUND"
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("node %s = %q, want %q", k, got[k], v)
			}
		}
		if !recordBy(node, "api.test", "A", audit.DecisionAllow) || !recordBy(node, "api.test", "AAAA", audit.DecisionAllow) ||
			!recordBy(node, "x.denied.test", "A", audit.DecisionDeny) {
			t.Errorf("node's queries are not all recorded naming node: %+v", recs.all())
		}
	})

	t.Run("go", func(t *testing.T) {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		out := run([]string{"GODEBUG=netdns=go", "SLUICE_E2E_RESOLVE=" + res.IP4.String() + "," + res.IP6.String()}, self)
		var got map[string]string
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("go resolver output %q: %v", out, err)
		}
		v4, v6 := fmt.Sprint([]netip.Addr{apiTest4}), fmt.Sprint([]netip.Addr{apiTest6})
		want := map[string]string{"system ip4": v4, "system ip6": v6}
		for _, a := range []netip.Addr{res.IP4, res.IP6} {
			for _, proto := range []string{"udp", "tcp"} {
				p := proto + " " + a.String()
				want[p+" ip4"], want[p+" ip6"], want[p+" denied"] = v4, v6, "NXDOMAIN"
			}
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("go %s = %q, want %q", k, got[k], v)
			}
		}
		if !recordBy(self, "api.test", "A", audit.DecisionAllow) || !recordBy(self, "api.test", "AAAA", audit.DecisionAllow) ||
			!recordBy(self, "x.denied.test", "A", audit.DecisionDeny) {
			t.Errorf("the Go resolver's queries are not all recorded naming %s: %+v", self, recs.all())
		}
	})

	for _, n := range resolver.names() {
		if strings.Contains(n, "denied") {
			t.Errorf("the test resolver was asked the denied name %s", n)
		}
	}
}

// Node's fetch to the HTTPS API by name, under the real `sluice agent`
// with its DNS server on: the name resolves through the agent (the
// workload's resolv.conf names the test resolver, its hosts file does
// not name the API), the request goes through Sluice trusting its CA
// through NODE_EXTRA_CA_CERTS, the lookup is recorded naming node, and
// the request's record carries the name it was resolved from.
func TestAgentDNSNodeFetch(t *testing.T) {
	node := RequireTool(t, "node")
	e := newNodeEnv(t)
	resolver := startTestResolver(t, e.api, map[string]netip.Addr{"api.test": e.api.IP4})
	etc := filepath.Join("/etc/netns", e.wl.Name)
	if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+e.api.IP4.String()+"\noptions attempts:1 timeout:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.cfg.Agent.DNSPort = 15053
	// Forwarding goes to the test's own resolver only.
	e.cfg.Agent.DNS.Upstreams = []string{e.api.IP4.String()}
	e.startAgent()

	_, out := e.client(node, "-e", `fetch("https://api.test/dns-fetch").then(async (r) => console.log(r.status, await r.text()))`)
	if !strings.HasPrefix(out, "200 hello GET /dns-fetch") {
		t.Fatalf("node fetch got %q", out)
	}
	if !slices.Contains(resolver.names(), "api.test.") {
		t.Errorf("the test resolver was not asked api.test: %v", resolver.names())
	}
	if rec := e.record("/dns-fetch"); rec["dns_name"] != "api.test" {
		t.Errorf("record %v, want dns_name api.test", rec)
	}
	exe, _ := filepath.EvalSymlinks(node)
	found := false
	for _, line := range strings.Split(readFile(e.audit), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["kind"] != audit.KindDNS || m["dns_name"] != "api.test" {
			continue
		}
		if fmt.Sprint(m["exe"]) == exe || fmt.Sprint(m["comm"]) == "node" {
			found = true
		}
	}
	if !found {
		t.Errorf("no dns record of api.test naming node (%s):\n%s", exe, readFile(e.audit))
	}
}
