package policy

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

func mustParse(t testing.TB, src string) *Engine {
	t.Helper()
	e, err := Parse([]byte(src), "test.yaml")
	if err != nil {
		t.Fatalf("parse:\n%v", err)
	}
	return e
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

var public = addrs("93.184.215.14")

const rulesPolicy = `
version: 1
tls:
  passthrough: ["*.bank.example"]
rules:
  - name: block-admin
    destinations: {paths: ["/admin"]}
    action: deny
  - name: python-github
    workloads: {comm: [python3]}
    destinations: {hosts: ["*.github.com"], methods: [GET], paths: ["/repos/*/issues", "/v1/**"]}
    action: allow
    limits: {requestBody: 1KiB}
  - name: deny-github
    destinations: {hosts: ["*.github.com", "github.com"]}
    action: deny
  - name: audit-example
    destinations: {hosts: ["example.com"], ports: [80]}
    action: deny
    mode: audit
  - name: pods
    workloads: {namespaces: [agents], labels: {app: mcp}}
    destinations: {hosts: ["api.openai.com"]}
    action: allow
  - name: deny-openai
    destinations: {hosts: ["api.openai.com"]}
    action: deny
  - name: deny-net
    destinations: {cidrs: ["93.184.0.0/16"]}
    action: deny
defaults:
  action: allow
  limits: {requestBody: 10MB, responseBody: 1GB}
`

func TestRequestRules(t *testing.T) {
	e := mustParse(t, rulesPolicy)
	py := workload.Identity{Comm: "python3", Cgroup: "/a"}
	pod := workload.Identity{Namespace: "agents", Pod: "p", Labels: map[string]string{"app": "mcp", "x": "y"}}
	otherPod := workload.Identity{Namespace: "agents", Pod: "q", Labels: map[string]string{"app": "web"}}
	other := workload.Identity{Comm: "curl"}
	tests := []struct {
		name    string
		id      workload.Identity
		host    string
		port    uint16
		addrs   []netip.Addr
		method  string
		path    string
		verdict Verdict
		would   bool
		rule    string
		reason  string
		maxReq  int64
	}{
		{"path deny", other, "x.example", 443, addrs("1.1.1.1"), "GET", "/admin/users", Deny, false, "block-admin", audit.ReasonDeniedByRule, 0},
		{"path deny exact", other, "x.example", 443, addrs("1.1.1.1"), "GET", "/admin", Deny, false, "block-admin", audit.ReasonDeniedByRule, 0},
		{"path prefix is per segment", other, "x.example", 443, addrs("1.1.1.1"), "GET", "/administrator", Allow, false, "default", audit.ReasonAllowedByDefault, 10e6},
		{"dot segments", other, "x.example", 443, addrs("1.1.1.1"), "GET", "/v1/../admin/x", Deny, false, "block-admin", audit.ReasonDeniedByRule, 0},
		{"percent encoded", other, "x.example", 443, addrs("1.1.1.1"), "GET", "/%61dmin", Deny, false, "block-admin", audit.ReasonDeniedByRule, 0},
		{"double slash", other, "x.example", 443, addrs("1.1.1.1"), "GET", "//admin", Deny, false, "block-admin", audit.ReasonDeniedByRule, 0},
		{"python allowed glob", py, "api.github.com", 443, addrs("1.1.1.1"), "GET", "/repos/x/issues", Allow, false, "python-github", audit.ReasonAllowedByRule, 1024},
		{"python allowed globstar", py, "API.GitHub.com.", 443, addrs("1.1.1.1"), "GET", "/v1/a/b/c", Allow, false, "python-github", audit.ReasonAllowedByRule, 1024},
		{"python wrong method", py, "api.github.com", 443, addrs("1.1.1.1"), "POST", "/repos/x/issues", Deny, false, "deny-github", audit.ReasonDeniedByRule, 0},
		{"python glob is one segment", py, "api.github.com", 443, addrs("1.1.1.1"), "GET", "/repos/x/y/issues", Deny, false, "deny-github", audit.ReasonDeniedByRule, 0},
		{"other workload", other, "api.github.com", 443, addrs("1.1.1.1"), "GET", "/repos/x/issues", Deny, false, "deny-github", audit.ReasonDeniedByRule, 0},
		{"apex not under wildcard", py, "github.com", 443, addrs("1.1.1.1"), "GET", "/v1/x", Deny, false, "deny-github", audit.ReasonDeniedByRule, 0},
		{"audit rule", other, "example.com", 80, addrs("1.1.1.1"), "GET", "/", Allow, true, "audit-example", audit.ReasonDeniedByRule, 10e6},
		{"audit rule other port", other, "example.com", 443, addrs("1.1.1.1"), "GET", "/", Allow, false, "default", audit.ReasonAllowedByDefault, 10e6},
		{"labels match", pod, "api.openai.com", 443, addrs("1.1.1.1"), "POST", "/", Allow, false, "pods", audit.ReasonAllowedByRule, 10e6},
		{"labels differ", otherPod, "api.openai.com", 443, addrs("1.1.1.1"), "POST", "/", Deny, false, "deny-openai", audit.ReasonDeniedByRule, 0},
		{"cidr deny any", other, "x.example", 443, addrs("1.1.1.1", "93.184.1.1"), "GET", "/", Deny, false, "deny-net", audit.ReasonDeniedByRule, 0},
		{"default", other, "x.example", 443, addrs("1.1.1.1"), "GET", "/", Allow, false, "default", audit.ReasonAllowedByDefault, 10e6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Conn{Workload: tt.id, Host: tt.host, Port: tt.port, Addrs: tt.addrs, TLS: true}
			d := e.Request(context.Background(), &Request{Conn: c, Method: tt.method, Host: tt.host, Path: tt.path, ContentLength: -1})
			if d.Verdict != tt.verdict || d.WouldDeny != tt.would || d.Rule != tt.rule || d.Reason != tt.reason || d.MaxRequestBody != tt.maxReq {
				t.Fatalf("got %v would=%v rule=%q reason=%q maxReq=%d, want %v would=%v rule=%q reason=%q maxReq=%d",
					d.Verdict, d.WouldDeny, d.Rule, d.Reason, d.MaxRequestBody, tt.verdict, tt.would, tt.rule, tt.reason, tt.maxReq)
			}
			if d.Denied() && d.StatusCode() != http.StatusForbidden {
				t.Fatalf("status %d, want 403", d.StatusCode())
			}
		})
	}
}

func TestConnectionRules(t *testing.T) {
	e := mustParse(t, rulesPolicy)
	py := workload.Identity{Comm: "python3"}
	other := workload.Identity{Comm: "curl"}
	tests := []struct {
		name   string
		id     workload.Identity
		host   string
		port   uint16
		addrs  []netip.Addr
		tls    bool
		action Action
		rule   string
		reason string
		would  bool
	}{
		// block-admin has a path: HTTP decides, so every connection decrypts first.
		{"per request", other, "api.github.com", 443, public, true, Decrypt, "", audit.ReasonPerRequest, false},
		{"passthrough", other, "www.bank.example", 443, addrs("1.1.1.1"), true, Passthrough, "passthrough", audit.ReasonPassthrough, false},
		{"passthrough skips per-request rules, deny by host applies", py, "x.bank.example", 443, addrs("93.184.3.3"), true, Reject, "deny-net", audit.ReasonDeniedByRule, false},
		{"passthrough only for TLS", other, "www.bank.example", 80, addrs("1.1.1.1"), false, Decrypt, "", audit.ReasonPerRequest, false},
		{"ssrf loopback", other, "localhost", 443, addrs("127.0.0.1"), true, Reject, RuleSSRF, audit.ReasonLoopback, false},
		{"ssrf metadata", other, "metadata.google.internal", 80, addrs("169.254.169.254"), false, Reject, RuleSSRF, audit.ReasonMetadata, false},
		{"ssrf any answer", other, "rebind.example", 443, addrs("1.1.1.1", "10.0.0.1"), true, Reject, RuleSSRF, audit.ReasonPrivate, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := e.Connection(context.Background(), &Conn{Workload: tt.id, Host: tt.host, Port: tt.port, Addrs: tt.addrs, TLS: tt.tls})
			if d.Action != tt.action || d.Rule != tt.rule || d.Reason != tt.reason || d.WouldDeny != tt.would {
				t.Fatalf("got %v rule=%q reason=%q would=%v, want %v rule=%q reason=%q would=%v", d.Action, d.Rule, d.Reason, d.WouldDeny, tt.action, tt.rule, tt.reason, tt.would)
			}
			if (d.Action == Reject) != d.Denied() {
				t.Fatalf("Reject must come with Verdict Deny: %+v", d)
			}
		})
	}
}

func TestConnectionHostRules(t *testing.T) {
	e := mustParse(t, `
version: 1
rules:
  - name: deny-evil
    destinations: {hosts: ["*.evil.example"]}
    action: deny
  - name: audit-meh
    destinations: {hosts: ["meh.example"]}
    action: deny
    mode: audit
  - name: allow-good
    destinations: {hosts: ["good.example"]}
    action: allow
defaults: {action: deny}
`)
	tests := []struct {
		host   string
		action Action
		rule   string
		reason string
		would  bool
	}{
		{"a.evil.example", Reject, "deny-evil", audit.ReasonDeniedByRule, false},
		{"meh.example", Decrypt, "audit-meh", audit.ReasonDeniedByRule, true},
		{"good.example", Decrypt, "allow-good", audit.ReasonAllowedByRule, false},
		{"other.example", Reject, "default", audit.ReasonDeniedByDefault, false},
	}
	for _, tt := range tests {
		d := e.Connection(context.Background(), &Conn{Host: tt.host, Port: 443, Addrs: public, TLS: true})
		if d.Action != tt.action || d.Rule != tt.rule || d.Reason != tt.reason || d.WouldDeny != tt.would {
			t.Errorf("%s: got %v %q %q would=%v, want %v %q %q would=%v", tt.host, d.Action, d.Rule, d.Reason, d.WouldDeny, tt.action, tt.rule, tt.reason, tt.would)
		}
	}
}

func TestSSRFGuard(t *testing.T) {
	e := mustParse(t, `
version: 1
ssrf:
  allowCIDRs: ["10.20.0.0/16"]
rules:
  - name: local-upstream
    workloads: {comm: [tester]}
    destinations: {cidrs: ["127.0.0.0/8"], ports: [8443]}
    action: allow
  - name: try-metadata
    destinations: {cidrs: ["169.254.169.254/32"]}
    action: allow
    workloads: {comm: [cloud-init]}
`)
	tester := workload.Identity{Comm: "tester"}
	other := workload.Identity{Comm: "curl"}
	tests := []struct {
		name   string
		id     workload.Identity
		port   uint16
		addr   string
		denied bool
		reason string
	}{
		{"public", other, 443, "93.184.215.14", false, ""},
		{"public v6", other, 443, "2606:2800:220:1::1", false, ""},
		{"loopback", other, 443, "127.0.0.1", true, audit.ReasonLoopback},
		{"loopback other /8", other, 443, "127.1.2.3", true, audit.ReasonLoopback},
		{"loopback v6", other, 443, "::1", true, audit.ReasonLoopback},
		{"metadata", other, 80, "169.254.169.254", true, audit.ReasonMetadata},
		{"metadata v6", other, 80, "fd00:ec2::254", true, audit.ReasonMetadata},
		{"metadata mapped", other, 80, "::ffff:169.254.169.254", true, audit.ReasonMetadata},
		{"metadata nat64", other, 80, "64:ff9b::a9fe:a9fe", true, audit.ReasonMetadata},
		{"link-local", other, 80, "169.254.1.1", true, audit.ReasonLinkLocal},
		{"link-local v6", other, 80, "fe80::1", true, audit.ReasonLinkLocal},
		{"rfc1918 10", other, 80, "10.1.2.3", true, audit.ReasonPrivate},
		{"rfc1918 172", other, 80, "172.31.255.255", true, audit.ReasonPrivate},
		{"not rfc1918 172.32", other, 80, "172.32.0.1", false, ""},
		{"rfc1918 192.168", other, 80, "192.168.1.1", true, audit.ReasonPrivate},
		{"ula", other, 80, "fd12:3456::1", true, audit.ReasonPrivate},
		{"cgnat", other, 80, "100.64.0.1", true, audit.ReasonCGNAT},
		{"cgnat end", other, 80, "100.127.255.255", true, audit.ReasonCGNAT},
		{"not cgnat", other, 80, "100.128.0.1", false, ""},
		{"unspecified", other, 80, "0.0.0.0", true, audit.ReasonUnspecified},
		{"unspecified v6", other, 80, "::", true, audit.ReasonUnspecified},
		{"multicast", other, 80, "224.0.0.1", true, audit.ReasonMulticast},
		{"broadcast", other, 80, "255.255.255.255", true, audit.ReasonMulticast},
		{"multicast v6", other, 80, "ff02::1", true, audit.ReasonMulticast},
		{"mapped loopback", other, 80, "::ffff:127.0.0.1", true, audit.ReasonLoopback},
		{"nat64 private", other, 80, "64:ff9b::a00:1", true, audit.ReasonEmbedded},
		{"nat64 public", other, 80, "64:ff9b::5db8:d70e", false, ""},
		{"6to4 loopback", other, 80, "2002:7f00:1::1", true, audit.ReasonEmbedded},
		{"6to4 public", other, 80, "2002:5db8:d70e::1", false, ""},
		{"6to4 metadata", other, 80, "2002:a9fe:a9fe::1", true, audit.ReasonMetadata},
		{"local-use nat64", other, 80, "64:ff9b:1::5db8:d70e", true, audit.ReasonEmbedded},
		{"teredo to private client", other, 80, "2001:0:4136:e378:8000:63bf:f5ff:fffe", true, audit.ReasonEmbedded}, // client 10.0.0.1
		{"teredo to public client", other, 80, "2001:0:4136:e378:8000:63bf:a247:28f1", false, ""},                   // client 93.184.215.14
		{"documentation v6", other, 80, "2001:db8::1", true, audit.ReasonReserved},
		{"allowCIDRs", other, 80, "10.20.3.4", false, ""},
		{"allowCIDRs mapped", other, 80, "::ffff:10.20.3.4", false, ""},
		{"rule allows loopback for its workload and port", tester, 8443, "127.0.0.1", false, ""},
		{"rule port differs", tester, 8444, "127.0.0.1", true, audit.ReasonLoopback},
		{"rule workload differs", other, 8443, "127.0.0.1", true, audit.ReasonLoopback},
		{"rule does not open other ranges", tester, 8443, "10.0.0.1", true, audit.ReasonPrivate},
		{"metadata allowed explicitly", workload.Identity{Comm: "cloud-init"}, 80, "169.254.169.254", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Conn{Workload: tt.id, Host: "h.example", Port: tt.port, Addrs: addrs(tt.addr)}
			cd := e.Connection(context.Background(), c)
			rd := e.Request(context.Background(), &Request{Conn: c, Method: "GET", Host: "h.example", Path: "/"})
			for _, d := range []Decision{cd.Decision, rd} {
				if d.Denied() != tt.denied || (tt.denied && (d.Rule != RuleSSRF || d.Reason != tt.reason)) {
					t.Fatalf("got denied=%v rule=%q reason=%q, want denied=%v reason=%q", d.Denied(), d.Rule, d.Reason, tt.denied, tt.reason)
				}
			}
			if tt.denied && cd.Action != Reject {
				t.Fatalf("action %v, want reject", cd.Action)
			}
		})
	}
}

func TestAuditModes(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		addr    string
		host    string
		verdict Verdict
		would   bool
		rule    string
		reason  string
	}{
		{"global audit rule", "version: 1\nmode: audit\nrules: [{name: d, action: deny, destinations: {hosts: [x.example]}}]\n", "1.1.1.1", "x.example", Allow, true, "d", audit.ReasonDeniedByRule},
		{"rule enforce over global audit", "version: 1\nmode: audit\nrules: [{name: d, action: deny, mode: enforce, destinations: {hosts: [x.example]}}]\n", "1.1.1.1", "x.example", Deny, false, "d", audit.ReasonDeniedByRule},
		{"rule audit over global enforce", "version: 1\nrules: [{name: d, action: deny, mode: audit, destinations: {hosts: [x.example]}}]\n", "1.1.1.1", "x.example", Allow, true, "d", audit.ReasonDeniedByRule},
		{"defaults mode", "version: 1\ndefaults: {action: deny, mode: audit}\n", "1.1.1.1", "x.example", Allow, true, "default", audit.ReasonDeniedByDefault},
		{"ssrf audit", "version: 1\nmode: audit\n", "10.0.0.1", "x.example", Allow, true, RuleSSRF, audit.ReasonPrivate},
		{"ssrf mode overrides", "version: 1\nmode: audit\nssrf: {mode: enforce}\n", "10.0.0.1", "x.example", Deny, false, RuleSSRF, audit.ReasonPrivate},
		{"metadata enforced in audit", "version: 1\nmode: audit\n", "169.254.169.254", "x.example", Deny, false, RuleSSRF, audit.ReasonMetadata},
		{"rule deny wins over ssrf audit", "version: 1\nssrf: {mode: audit}\nrules: [{name: d, action: deny, destinations: {hosts: [x.example]}}]\n", "10.0.0.1", "x.example", Deny, false, "d", audit.ReasonDeniedByRule},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := mustParse(t, tt.src)
			c := &Conn{Host: tt.host, Port: 443, Addrs: addrs(tt.addr), TLS: true}
			d := e.Request(context.Background(), &Request{Conn: c, Method: "GET", Host: tt.host, Path: "/"})
			if d.Verdict != tt.verdict || d.WouldDeny != tt.would || d.Rule != tt.rule || d.Reason != tt.reason {
				t.Fatalf("got %v would=%v %q %q, want %v would=%v %q %q", d.Verdict, d.WouldDeny, d.Rule, d.Reason, tt.verdict, tt.would, tt.rule, tt.reason)
			}
		})
	}
}

func TestDefaultPolicy(t *testing.T) {
	e, err := Default(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		addr   string
		denied bool
		would  bool
		reason string
	}{
		{"93.184.215.14", false, false, audit.ReasonAllowedByDefault},
		{"127.0.0.1", false, true, audit.ReasonLoopback},
		{"10.0.0.1", false, true, audit.ReasonPrivate},
		{"169.254.169.254", true, false, audit.ReasonMetadata},
		{"fd00:ec2::254", true, false, audit.ReasonMetadata},
	} {
		c := &Conn{Host: "h", Port: 80, Addrs: addrs(tt.addr)}
		cd := e.Connection(context.Background(), c)
		d := e.Request(context.Background(), &Request{Conn: c, Method: "GET", Host: "h", Path: "/"})
		if d.Denied() != tt.denied || d.WouldDeny != tt.would || d.Reason != tt.reason || cd.Denied() != tt.denied {
			t.Errorf("%s: got denied=%v would=%v %q (conn %v), want denied=%v would=%v %q", tt.addr, d.Denied(), d.WouldDeny, d.Reason, cd.Action, tt.denied, tt.would, tt.reason)
		}
	}
}

func TestCompileSpec(t *testing.T) {
	e, err := Compile(Spec{Allow: []string{"*.ok.example"}, Deny: []string{"bad.ok.example"}, Passthrough: []string{"pt.ok.example"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		host   string
		addr   string
		action Action
		rule   string
	}{
		{"a.ok.example", "127.0.0.1", Decrypt, "allow-hosts"}, // loopback passes: Spec guards metadata only
		{"bad.ok.example", "1.1.1.1", Reject, "deny-hosts"},
		{"other.example", "1.1.1.1", Reject, "default"},
		{"pt.ok.example", "1.1.1.1", Passthrough, "passthrough"},
		{"a.ok.example", "169.254.169.254", Reject, RuleSSRF},
	} {
		d := e.Connection(context.Background(), &Conn{Host: tt.host, Addrs: addrs(tt.addr), Port: 443, TLS: true})
		if d.Action != tt.action || d.Rule != tt.rule || d.WouldDeny {
			t.Errorf("%s: got %v %q would=%v, want %v %q", tt.host, d.Action, d.Rule, d.WouldDeny, tt.action, tt.rule)
		}
	}
	var cur Current
	if d := cur.Load().Request(context.Background(), &Request{Host: "x", Path: "/"}); d.Denied() || d.WouldDeny {
		t.Fatalf("zero Current must allow: %+v", d)
	}
}

func TestDenyBody(t *testing.T) {
	e := mustParse(t, rulesPolicy)
	d := e.Request(context.Background(), &Request{Conn: &Conn{Addrs: public}, Method: "GET", Host: "x", Path: "/admin"})
	want := `{"error":"Forbidden","rule":"block-admin","reason":"denied by rule"}` + "\n"
	if got := string(d.DenyBody()); got != want {
		t.Fatalf("body %s, want %s", got, want)
	}
	if !strings.Contains(string(d.DenyBody()), d.Reason) {
		t.Fatal("body must carry the reason")
	}
}

// capture on a rule (or in defaults) reaches the decision, so the proxy
// writes that exchange to the pcapng capture; other requests are not
// captured.
func TestCaptureFollowsRule(t *testing.T) {
	e, err := Parse([]byte(`version: 1
defaults: {action: allow}
rules:
  - name: watch-github
    destinations: {hosts: [api.github.com]}
    action: allow
    capture: true
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]bool{"api.github.com": true, "example.com": false} {
		c := &Conn{Host: host, Port: 443, Addrs: []netip.Addr{netip.MustParseAddr("93.184.216.34")}}
		d := e.Request(context.Background(), &Request{Conn: c, Method: "GET", Host: host, Path: "/"})
		if d.Capture != want {
			t.Errorf("%s: Capture = %v, want %v (rule %s)", host, d.Capture, want, d.Rule)
		}
	}
}

// Capture is decided per connection from the hosts a capture rule names,
// before any HTTP is read.
func TestCaptureDecidedPerConnection(t *testing.T) {
	e, err := Parse([]byte(`version: 1
defaults: {action: allow}
rules:
  - name: watch-github-issues
    destinations: {hosts: [api.github.com], paths: [/repos]}
    action: allow
    capture: true
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]bool{"api.github.com": true, "example.com": false} {
		c := &Conn{Host: host, Port: 443, TLS: true, Addrs: []netip.Addr{netip.MustParseAddr("93.184.216.34")}}
		if got := e.Connection(context.Background(), c).Capture; got != want {
			t.Errorf("%s: Capture = %v, want %v", host, got, want)
		}
	}
}

// A flow that is not HTTP can't match a rule with methods or paths: asked
// again with Opaque, the engine skips such rules and decides on the rest,
// so "deny by default, allow GET /v1 on api" denies raw TCP to api.
func TestOpaqueFlowSkipsPerRequestRules(t *testing.T) {
	e, err := Parse([]byte(`version: 1
defaults: {action: deny}
rules:
  - name: api-reads
    destinations: {hosts: [api.example.com], methods: [GET], paths: [/v1]}
    action: allow
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := &Conn{Host: "api.example.com", Port: 443, TLS: true, Addrs: []netip.Addr{netip.MustParseAddr("93.184.216.34")}}
	if d := e.Connection(context.Background(), c); d.Action != Decrypt || d.Reason != audit.ReasonPerRequest {
		t.Fatalf("before HTTP: %v %q, want decrypt and %q", d.Action, d.Reason, audit.ReasonPerRequest)
	}
	c.Opaque = true
	d := e.Connection(context.Background(), c)
	if d.Action != Reject || d.Rule != RuleDefault || d.Reason != audit.ReasonDeniedByDefault {
		t.Fatalf("opaque: %v rule %q reason %q, want reject by the default rule", d.Action, d.Rule, d.Reason)
	}
}

// Opaque flows and deny rules with paths: the deny applies, since the
// flow may be HTTP the proxy did not recognise.
func TestOpaqueFlowHitsPathDeny(t *testing.T) {
	e, err := Parse([]byte(`version: 1
rules:
  - name: no-admin
    destinations: {hosts: [api.example.com], paths: [/admin]}
    action: deny
  - name: api
    destinations: {hosts: [api.example.com]}
    action: allow
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := &Conn{Host: "api.example.com", Port: 443, TLS: true, Opaque: true, Addrs: []netip.Addr{netip.MustParseAddr("93.184.216.34")}}
	d := e.Connection(context.Background(), c)
	if d.Action != Reject || d.Rule != "no-admin" || d.Reason != audit.ReasonDeniedByRule {
		t.Fatalf("opaque flow to a host with a path deny: %v rule %q reason %q, want reject by no-admin", d.Action, d.Rule, d.Reason)
	}
}
