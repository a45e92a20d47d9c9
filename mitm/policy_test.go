package mitm

// Tests of the real policy engine (policy/) through the real proxy: the
// explicit listener, Go and raw clients, loopback upstreams. Policies here
// must allow loopback explicitly (the upstreams are on 127.0.0.1), which is
// itself a test of the SSRF guard's exemptions.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/policy/policytest"
	"github.com/sluicehq/sluice/workload"
)

// policyHarness is a proxy whose decisions come from a policy file.
type policyHarness struct {
	*harness
	cur *policy.Current
}

// loopbackOnly makes the proxy's dialer refuse anything but loopback, so
// a policy bug can never send a test's traffic elsewhere (e.g. to
// 169.254.169.254).
func loopbackOnly(_ *config.Proxy, d *Deps) {
	d.Dialer = &net.Dialer{Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil || !ap.Addr().Unmap().IsLoopback() {
			return fmt.Errorf("test dialer: refusing non-loopback %s", address)
		}
		return nil
	}}
}

// ssrfResolver adds names resolving to addresses the guard must refuse.
var ssrfResolver = mapResolver{
	"api.test":      loopback,
	"internal.test": loopback,
	"other.test":    loopback,
	"metadata.test": {netip.MustParseAddr("169.254.169.254")},
	"mixed.test":    {netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.1.2.3")},
}

func newPolicyHarness(t *testing.T, tca *testCA, src string, o policy.Options) *policyHarness {
	t.Helper()
	e, err := policy.ParseWith([]byte(src), "test-policy.yaml", o)
	if err != nil {
		t.Fatalf("policy:\n%v", err)
	}
	t.Cleanup(func() { e.Limiters().Close() })
	cur := &policy.Current{}
	cur.Store(e)
	h := newHarness(t, tca, e, loopbackOnly, func(_ *config.Proxy, d *Deps) {
		d.Policy = cur
		d.Resolver = ssrfResolver
	})
	return &policyHarness{harness: h, cur: cur}
}

// get sends one request through the proxy and returns status, body and
// headers.
func (h *policyHarness) do(t *testing.T, h2 bool, method, url, body string) (*http.Response, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.client(h2).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	b := readAll(t, resp.Body)
	resp.Body.Close()
	return resp, b
}

// allowUpstream is the rule every policy here needs: the upstream is on
// loopback, which the SSRF guard refuses unless a rule allows it.
func allowUpstream(port uint16) string {
	return fmt.Sprintf(`  - name: upstream
    destinations: {hosts: [api.test], cidrs: [127.0.0.1/32], ports: [%d]}
    action: allow
`, port)
}

func TestPolicyDenyThroughProxy(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var hits atomic.Int32
	up := startUpstream(t, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, "upstream "+r.URL.Path)
	}))
	port := up.addr.Port()
	h := newPolicyHarness(t, tca, fmt.Sprintf(`version: 1
rules:
  - name: block-admin
    destinations: {paths: [/admin]}
    action: deny
%s`, allowUpstream(port)), policy.Options{})
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprint("h2=", h2), func(t *testing.T) {
			resp, body := h.do(t, h2, "GET", fmt.Sprintf("https://api.test:%d/admin/users", port), "")
			want := `{"error":"Forbidden","rule":"block-admin","reason":"denied by rule"}` + "\n"
			if resp.StatusCode != 403 || body != want || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("status %d body %q, want 403 %q", resp.StatusCode, body, want)
			}
			// Dot segments do not get around the rule.
			if resp, _ := h.do(t, h2, "GET", fmt.Sprintf("https://api.test:%d/public/%%2e%%2e/admin", port), ""); resp.StatusCode != 403 {
				t.Fatalf("encoded dot segments: status %d", resp.StatusCode)
			}
			resp, body = h.do(t, h2, "GET", fmt.Sprintf("https://api.test:%d/ok", port), "")
			if resp.StatusCode != 200 || body != "upstream /ok" {
				t.Fatalf("allowed request: %d %q", resp.StatusCode, body)
			}
		})
	}
	if n := hits.Load(); n != 2 {
		t.Fatalf("upstream saw %d requests, want only the 2 allowed", n)
	}
	rec := h.recs.wait(t, "deny", func(r audit.Record) bool { return r.Path == "/admin/users" })
	if rec.Decision != audit.DecisionDeny || rec.Rule != "block-admin" || rec.Reason != audit.ReasonDeniedByRule || rec.Status != 403 || rec.Source != "sluice" {
		t.Errorf("deny record %+v", rec)
	}
	rec = h.recs.wait(t, "allow", func(r audit.Record) bool { return r.Path == "/ok" })
	if rec.Decision != audit.DecisionAllow || rec.Rule != "upstream" || rec.Reason != audit.ReasonAllowedByRule {
		t.Errorf("allow record %+v", rec)
	}
}

func TestPolicyAuditModeThroughProxy(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "served") }))
	port := up.addr.Port()
	h := newPolicyHarness(t, tca, fmt.Sprintf(`version: 1
mode: audit
rules:
  - name: block-admin
    destinations: {paths: [/admin]}
    action: deny
%s`, allowUpstream(port)), policy.Options{})
	resp, body := h.do(t, false, "GET", fmt.Sprintf("https://api.test:%d/admin", port), "")
	if resp.StatusCode != 200 || body != "served" {
		t.Fatalf("audit mode must pass: %d %q", resp.StatusCode, body)
	}
	rec := h.recs.wait(t, "would_deny", func(r audit.Record) bool { return r.Path == "/admin" })
	if rec.Decision != audit.DecisionWouldDeny || rec.Rule != "block-admin" || rec.Reason != audit.ReasonDeniedByRule || rec.Status != 200 {
		t.Errorf("record %+v", rec)
	}
	// In audit mode the SSRF guard records loopback without the exemption too.
	resp, _ = h.do(t, false, "GET", fmt.Sprintf("https://other.test:%d/x", port), "")
	if resp.StatusCode != 200 {
		t.Fatalf("audit-mode SSRF must pass: %d", resp.StatusCode)
	}
	rec = h.recs.wait(t, "ssrf would_deny", func(r audit.Record) bool { return r.Host == "other.test" && r.Kind == audit.KindHTTP })
	if rec.Decision != audit.DecisionWouldDeny || rec.Rule != policy.RuleSSRF || rec.Reason != audit.ReasonLoopback {
		t.Errorf("ssrf record %+v", rec)
	}
}

func TestPolicyRateLimitThroughProxy(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	port := up.addr.Port()
	h := newPolicyHarness(t, tca, `version: 1
rules:
  - name: api
    destinations: {hosts: [api.test], cidrs: [127.0.0.1/32]}
    action: allow
    rateLimit: {minute: 2, kongHeaders: true}
`, policy.Options{})
	url := fmt.Sprintf("https://api.test:%d/x", port)
	for i, want := range []struct {
		status                 int
		rateLimit, retry, kong string
	}{
		{200, `"api-minute";r=1;t=30`, "", "1"},
		{200, `"api-minute";r=0;t=60`, "", "0"},
		{429, `"api-minute";r=0;t=60`, "30", "0"},
	} {
		resp, body := h.do(t, i%2 == 1, "GET", url, "")
		if resp.StatusCode != want.status || resp.Header.Get("RateLimit") != want.rateLimit || resp.Header.Get("Retry-After") != want.retry ||
			resp.Header.Get("RateLimit-Policy") != `"api-minute";q=2;w=60` || resp.Header.Get("X-RateLimit-Remaining-Minute") != want.kong ||
			resp.Header.Get("X-RateLimit-Limit-Minute") != "2" {
			t.Fatalf("request %d: %d %v", i, resp.StatusCode, resp.Header)
		}
		if want.status == 429 && body != `{"error":"Too Many Requests","rule":"api","reason":"rate limit exceeded"}`+"\n" {
			t.Fatalf("429 body %q", body)
		}
	}
	rec := h.recs.wait(t, "429", func(r audit.Record) bool { return r.Status == 429 })
	if rec.Decision != audit.DecisionDeny || rec.Rule != "api" || rec.Reason != audit.ReasonRateLimited {
		t.Errorf("record %+v", rec)
	}
}

func redisRateLimitPolicy(port uint16, addr string, faultTolerant bool) string {
	return fmt.Sprintf(`version: 1
rules:
  - name: shared
    destinations: {hosts: [api.test], cidrs: [127.0.0.1/32], ports: [%d]}
    action: allow
    rateLimit: {minute: 3, by: destination, policy: redis, redis: {addr: %q, timeout: 2s}, faultTolerant: %v}
`, port, addr, faultTolerant)
}

func TestPolicyRedisSharedByTwoProxies(t *testing.T) {
	r := policytest.StartRedis(t)
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	port := up.addr.Port()
	a := newPolicyHarness(t, tca, redisRateLimitPolicy(port, r.Addr, true), policy.Options{Limiters: policy.NewLimiters(0)})
	b := newPolicyHarness(t, tca, redisRateLimitPolicy(port, r.Addr, true), policy.Options{Limiters: policy.NewLimiters(0)})
	url := fmt.Sprintf("https://api.test:%d/x", port)
	var got []int
	for _, h := range []*policyHarness{a, b, a, b} {
		resp, _ := h.do(t, false, "GET", url, "")
		got = append(got, resp.StatusCode)
	}
	if fmt.Sprint(got) != "[200 200 200 429]" {
		t.Fatalf("statuses %v, want the 4th request (on proxy b) limited by the count shared with proxy a", got)
	}
}

func TestPolicyRedisDownThroughProxy(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	port := up.addr.Port()
	for _, tt := range []struct {
		faultTolerant bool
		status        int
		body          string
	}{
		{true, 200, "ok"},
		{false, 503, `{"error":"Service Unavailable","rule":"shared","reason":"rate limiter unavailable"}` + "\n"},
	} {
		t.Run(fmt.Sprint("faultTolerant=", tt.faultTolerant), func(t *testing.T) {
			r := policytest.StartRedis(t)
			h := newPolicyHarness(t, tca, redisRateLimitPolicy(port, r.Addr, tt.faultTolerant), policy.Options{})
			url := fmt.Sprintf("https://api.test:%d/x", port)
			if resp, _ := h.do(t, false, "GET", url, ""); resp.StatusCode != 200 || resp.Header.Get("RateLimit") != `"shared-minute";r=2;t=20` {
				t.Fatalf("with Redis up: %d %v", resp.StatusCode, resp.Header)
			}
			r.Stop()
			resp, body := h.do(t, false, "GET", url, "")
			if resp.StatusCode != tt.status || body != tt.body {
				t.Fatalf("with Redis down: %d %q, want %d %q", resp.StatusCode, body, tt.status, tt.body)
			}
			e := h.cur.Load().(*policy.Engine)
			if n := e.Limiters().Faults(); n != 1 {
				t.Fatalf("faults counted %d, want 1", n)
			}
		})
	}
}

func TestPolicySizeLimitsThroughProxy(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var hits atomic.Int32
	up := startUpstream(t, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		if r.URL.Path == "/stream" {
			rc := http.NewResponseController(w)
			for range 4 {
				io.WriteString(w, "12345")
				rc.Flush()
			}
			return
		}
		io.WriteString(w, "ok")
	}))
	port := up.addr.Port()
	h := newPolicyHarness(t, tca, fmt.Sprintf(`version: 1
rules:
  - name: sizes
    destinations: {hosts: [api.test], cidrs: [127.0.0.1/32], ports: [%d]}
    action: allow
    limits: {requestBody: 10B, responseBody: "12"}
`, port), policy.Options{})

	for _, tt := range []struct {
		name, req string
		status    int
	}{
		{"413 by Content-Length", "POST /cl HTTP/1.1\r\nHost: api.test\r\nContent-Length: 20\r\n\r\n" + strings.Repeat("y", 20), 413},
		{"417 with Expect: 100-continue", "POST /expect HTTP/1.1\r\nHost: api.test\r\nContent-Length: 20\r\nExpect: 100-continue\r\n\r\n", 417},
		{"413 chunked while streaming", "POST /chunked HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n", 413},
		{"under the limit", "POST /small HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n1234\r\n0\r\n\r\n", 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := connectTLS(t, h.harness, "api.test", port)
			resp, body := rawRequest(t, c, tt.req)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d body %q, want %d", resp.StatusCode, body, tt.status)
			}
			if tt.status != 200 && !strings.Contains(body, `"rule":"sizes"`) {
				t.Fatalf("body %q does not name the rule", body)
			}
		})
	}
	rec := h.recs.wait(t, "chunked 413", func(r audit.Record) bool { return r.Path == "/chunked" })
	if rec.Decision != audit.DecisionDeny || rec.Rule != "sizes" || rec.Status != 413 {
		t.Errorf("record %+v", rec)
	}
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprint("streamed response cut h2=", h2), func(t *testing.T) {
			resp, err := h.client(h2).Get(fmt.Sprintf("https://api.test:%d/stream", port))
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil || string(b) != "123451234512" {
				t.Fatalf("read %q, %v: want the first 12 bytes then an error", b, err)
			}
		})
	}
	rec = h.recs.wait(t, "cut", func(r audit.Record) bool { return r.Path == "/stream" })
	if rec.Decision != audit.DecisionDeny || rec.BytesOut != 12 || !strings.Contains(rec.Error, "12 bytes") {
		t.Errorf("record %+v", rec)
	}
}

func TestPolicySSRFThroughProxy(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var hits atomic.Int32
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "reached") })
	up := startUpstream(t, tca, false, handler)
	plain := startPlainUpstream(t, handler)
	h := newPolicyHarness(t, tca, fmt.Sprintf(`version: 1
rules:
  - name: upstream
    destinations: {hosts: [api.test, mixed.test], cidrs: [127.0.0.1/32], ports: [%d, %d]}
    action: allow
`, up.addr.Port(), plain.addr.Port()), policy.Options{})

	// Allowed: the rule exempts loopback for api.test on these ports.
	if resp, body := h.do(t, false, "GET", fmt.Sprintf("http://api.test:%d/", plain.addr.Port()), ""); resp.StatusCode != 200 || body != "reached" {
		t.Fatalf("allowed plain: %d %q", resp.StatusCode, body)
	}
	if resp, body := h.do(t, false, "GET", fmt.Sprintf("https://api.test:%d/", up.addr.Port()), ""); resp.StatusCode != 200 || body != "reached" {
		t.Fatalf("allowed TLS: %d %q", resp.StatusCode, body)
	}
	before := hits.Load()

	// Plain HTTP: the deny answer names the reason.
	for _, tt := range []struct {
		host   string
		port   uint16
		reason string
	}{
		{"internal.test", plain.addr.Port(), audit.ReasonLoopback},
		{"metadata.test", 80, audit.ReasonMetadata},
		// One answer exempted by the rule, the other private: refused.
		{"mixed.test", plain.addr.Port(), audit.ReasonPrivate},
		{"127.0.0.1", plain.addr.Port(), audit.ReasonLoopback},
	} {
		resp, body := h.do(t, false, "GET", fmt.Sprintf("http://%s:%d/", tt.host, tt.port), "")
		want := fmt.Sprintf(`{"error":"Forbidden","rule":"ssrf","reason":%q}`+"\n", tt.reason)
		if resp.StatusCode != 403 || body != want {
			t.Errorf("%s: %d %q, want 403 %q", tt.host, resp.StatusCode, body, want)
		}
	}
	// TLS: the connection is refused before any upstream dial.
	for _, host := range []string{"internal.test", "metadata.test"} {
		if _, err := h.client(false).Get(fmt.Sprintf("https://%s:%d/", host, up.addr.Port())); err == nil {
			t.Errorf("%s: TLS request succeeded", host)
		}
	}
	rec := h.recs.wait(t, "metadata L4 deny", func(r audit.Record) bool { return r.Kind == audit.KindL4 && r.Host == "metadata.test" })
	if rec.Decision != audit.DecisionDeny || rec.Rule != policy.RuleSSRF || rec.Reason != audit.ReasonMetadata {
		t.Errorf("record %+v", rec)
	}
	if n := hits.Load(); n != before {
		t.Fatalf("the upstream was reached %d times through refused names", n-before)
	}
}

// TestPolicyReloadThroughProxy: a file change reloads the policy; a
// streaming response open across the reload keeps flowing; a later
// request sees the new decision; a broken file is refused and the policy
// in force stays.
func TestPolicyReloadThroughProxy(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	ack := make(chan int)
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/events" {
			io.WriteString(w, "ok")
			return
		}
		rc := http.NewResponseController(w)
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			if rc.Flush() != nil {
				return
			}
			select {
			case <-ack:
			case <-r.Context().Done():
				return
			case <-time.After(15 * time.Second):
				return
			}
		}
	}))
	port := up.addr.Port()
	allow := fmt.Sprintf("version: 1\nrules:\n%s", allowUpstream(port))
	deny := fmt.Sprintf("version: 1\nrules:\n  - name: no-events\n    destinations: {paths: [/events]}\n    action: deny\n%s", allowUpstream(port))

	dir := t.TempDir()
	file := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(file, []byte(allow), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newPolicyHarness(t, tca, allow, policy.Options{})
	reloaded := make(chan error, 4)
	w := &policy.Watcher{Path: file, Apply: func(e *policy.Engine) { h.cur.Store(e) }, Interval: 10 * time.Millisecond, NoSignal: true,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Reloaded: func(err error) { reloaded <- err }}
	if _, err := w.Load(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := w.Start(ctx)
	t.Cleanup(func() { cancel(); <-done })
	next := func() error {
		select {
		case err := <-reloaded:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("no reload within 10s")
			return nil
		}
	}

	url := fmt.Sprintf("https://api.test:%d/events", port)
	resp, err := h.client(false).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	readEvent := func(i int) {
		t.Helper()
		l, err := br.ReadString('\n')
		if err != nil || l != fmt.Sprintf("data: %d\n", i) {
			t.Fatalf("event %d: %q %v", i, l, err)
		}
		br.ReadString('\n')
	}
	readEvent(0)

	writeAtomic(t, file, deny)
	if err := next(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	// The open stream continues after the reload.
	ack <- 0
	readEvent(1)
	// A new request sees the new policy.
	if resp2, body := h.do(t, false, "GET", url, ""); resp2.StatusCode != 403 || !strings.Contains(body, `"rule":"no-events"`) {
		t.Fatalf("after reload: %d %q", resp2.StatusCode, body)
	}
	// A broken file is refused; the deny stays in force.
	writeAtomic(t, file, "version: 1\nrules: [{name: x, action: maybe}]\n")
	if err := next(); err == nil || !strings.Contains(err.Error(), `rules[0].action "maybe": use allow or deny`) {
		t.Fatalf("broken reload: %v", err)
	}
	if resp2, _ := h.do(t, false, "GET", url, ""); resp2.StatusCode != 403 {
		t.Fatalf("after broken reload: %d, want the previous policy's 403", resp2.StatusCode)
	}
	ack <- 1
	readEvent(2)
	ack <- 2
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("stream end: %q %v", rest, err)
	}
	rec := h.recs.wait(t, "stream record", func(r audit.Record) bool { return r.Path == "/events" && r.Status == 200 })
	if rec.Decision != audit.DecisionAllow || rec.Rule != "upstream" {
		t.Errorf("stream record %+v", rec)
	}
}

// TestPolicyWorkloadSelectorsTransparent drives Handle (the transparent
// path) with identities given directly, as the agent would attach them:
// rules select by comm and cgroup, and rate-limit buckets are per workload.
func TestPolicyWorkloadSelectorsTransparent(t *testing.T) {
	plain := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	h := newPolicyHarness(t, nil, `version: 1
ssrf: {allowCIDRs: [127.0.0.1/32]}
rules:
  - name: mcp-python
    workloads: {comm: [python3], cgroups: ["/kubepods/**"]}
    destinations: {hosts: [api.test]}
    action: allow
    rateLimit: {minute: 1, by: workload, hideClientHeaders: true}
  - name: others
    destinations: {hosts: [api.test]}
    action: deny
`, policy.Options{})
	podA := workload.Identity{PID: 10, Comm: "python3", Cgroup: "/kubepods/burstable/poda/cri-a.scope", ContainerID: "aaaaaaaaaaaa"}
	podB := workload.Identity{PID: 11, Comm: "python3", Cgroup: "/kubepods/burstable/podb/cri-b.scope", ContainerID: "bbbbbbbbbbbb"}
	host := workload.Identity{PID: 12, Comm: "python3", Cgroup: "/system.slice/cron.service"}
	curl := workload.Identity{PID: 13, Comm: "curl", Cgroup: "/kubepods/burstable/poda/cri-a.scope", ContainerID: "aaaaaaaaaaaa"}
	for i, tt := range []struct {
		id     workload.Identity
		status int
		rule   string
	}{
		{podA, 200, "mcp-python"},
		{podB, 200, "mcp-python"}, // its own bucket
		{podA, 429, "mcp-python"}, // podA's bucket is empty
		{host, 403, "others"},     // python3, but not under /kubepods
		{curl, 403, "others"},     // under /kubepods, but not python3
	} {
		c := transparent(t, h.harness, Destination{Addr: plain.addr}, tt.id)
		fmt.Fprintf(c, "GET /w%d HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n", i)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || (tt.status != 200 && !strings.Contains(body, fmt.Sprintf(`"rule":%q`, tt.rule))) {
			t.Fatalf("request %d (%s %s): %d %q, want %d rule %s", i, tt.id.Comm, tt.id.Cgroup, resp.StatusCode, body, tt.status, tt.rule)
		}
		rec := h.recs.wait(t, fmt.Sprint("/w", i), func(r audit.Record) bool { return r.Path == fmt.Sprint("/w", i) })
		if rec.Rule != tt.rule || rec.Workload.PID != tt.id.PID {
			t.Errorf("request %d record %+v", i, rec)
		}
	}
}

// writeAtomic replaces path's content the way a careful deployer does: a
// temporary file in the same directory renamed over it, so the watcher
// never reads a half-written file.
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
