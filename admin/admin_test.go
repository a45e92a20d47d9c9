package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/metrics"
	"github.com/sluicehq/sluice/workload"
)

func get(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func TestEndpoints(t *testing.T) {
	m := metrics.New(metrics.Options{})
	tb := flows.New(flows.Options{})
	gate := admin.NewGate("hooks attached", "proxy listening")
	srv := httptest.NewServer(admin.New(admin.Options{Registry: m.Registry(), Ready: gate.Err, Flows: tb}).Handler())
	defer srv.Close()

	if code, body, _ := get(t, srv.URL+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}

	// /readyz flips from 503 (naming what it waits for) to 200.
	code, body, _ := get(t, srv.URL+"/readyz")
	if code != 503 || !strings.Contains(body, "hooks attached, proxy listening") {
		t.Errorf("/readyz before = %d %q, want 503 naming both conditions", code, body)
	}
	gate.Done("hooks attached")
	code, body, _ = get(t, srv.URL+"/readyz")
	if code != 503 || strings.Contains(body, "hooks") || !strings.Contains(body, "proxy listening") {
		t.Errorf("/readyz half way = %d %q", code, body)
	}
	gate.Done("proxy listening")
	if code, body, _ := get(t, srv.URL+"/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz after = %d %q, want 200", code, body)
	}
	gate.Undo("proxy listening")
	if code, _, _ := get(t, srv.URL+"/readyz"); code != 503 {
		t.Errorf("/readyz after Undo = %d, want 503", code)
	}

	// /metrics shows what the sinks saw.
	id := workload.Identity{PID: 9, Comm: "node", Cgroup: "/mcp"}
	rec := &audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "api.example.com", Method: "GET", Status: 200,
		Source: "upstream", Decision: audit.DecisionAllow, BytesOut: 42, Duration: 20 * time.Millisecond}
	audit.Multi{m, tb}.Record(rec)
	code, body, hdr := get(t, srv.URL+"/metrics")
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") {
		t.Errorf("/metrics = %d %s", code, hdr.Get("Content-Type"))
	}
	for _, want := range []string{
		`sluice_proxy_requests_total{code="200",decision="allow",host="api.example.com",method="GET",source="upstream",workload="/mcp"} 1`,
		`sluice_proxy_request_duration_seconds_count{decision="allow",host="api.example.com"} 1`,
		`sluice_proxy_transferred_bytes_total{direction="out",host="api.example.com",kind="http",workload="/mcp"} 42`,
		"go_goroutines ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// /api/flows is the table's snapshot.
	code, body, hdr = get(t, srv.URL+admin.FlowsPath)
	if code != 200 || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("/api/flows = %d %s", code, hdr.Get("Content-Type"))
	}
	var snap flows.Snapshot
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatalf("decode /api/flows: %v\n%s", err, body)
	}
	if len(snap.Rows) != 1 || snap.Rows[0].PID != 9 || snap.Rows[0].Requests != 1 || snap.Rows[0].Destinations[0].Host != "api.example.com" {
		t.Errorf("/api/flows = %+v", snap)
	}

	// Only reads.
	resp, err := http.Post(srv.URL+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d, want 405", resp.StatusCode)
	}
	if code, _, _ := get(t, srv.URL+"/nope"); code != 404 {
		t.Errorf("/nope = %d, want 404", code)
	}
}

// A live check added with Watch (the running agent's Ready) turns
// /readyz to 503 while it fails, saying what is missing, and back to 200
// once it passes; it is not asked while a condition is pending.
func TestReadyzWatch(t *testing.T) {
	gate := admin.NewGate("hooks attached")
	var missing atomic.Pointer[string]
	var asked atomic.Int32
	gate.Watch(func() error {
		asked.Add(1)
		if m := missing.Load(); m != nil {
			return errors.New(*m)
		}
		return nil
	})
	srv := httptest.NewServer(admin.New(admin.Options{Ready: gate.Err}).Handler())
	defer srv.Close()

	if code, body, _ := get(t, srv.URL+"/readyz"); code != 503 || !strings.Contains(body, "waiting for hooks attached") || asked.Load() != 0 {
		t.Errorf("/readyz while starting = %d %q (live check asked %d times), want 503 waiting, check not asked", code, body, asked.Load())
	}
	gate.Done("hooks attached")
	if code, body, _ := get(t, srv.URL+"/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz = %d %q, want 200", code, body)
	}
	gap := "missing intercept address 169.254.77.77 (kernel route type unreachable, want local)"
	missing.Store(&gap)
	if code, body, _ := get(t, srv.URL+"/readyz"); code != 503 || body != "not ready: "+gap+"\n" {
		t.Errorf("/readyz with the address gone = %d %q, want 503 naming it", code, body)
	}
	missing.Store(nil)
	if code, _, _ := get(t, srv.URL+"/readyz"); code != 200 {
		t.Errorf("/readyz once restored = %d, want 200", code)
	}
}

func TestNilOptions(t *testing.T) {
	srv := httptest.NewServer(admin.New(admin.Options{}).Handler())
	defer srv.Close()
	if code, _, _ := get(t, srv.URL+"/readyz"); code != 200 {
		t.Errorf("/readyz without a check = %d, want 200", code)
	}
	if code, _, _ := get(t, srv.URL+"/metrics"); code != 404 {
		t.Errorf("/metrics without a registry = %d, want 404", code)
	}
	code, body, _ := get(t, srv.URL+admin.FlowsPath)
	if code != 200 || !strings.Contains(body, `"rows":[]`) {
		t.Errorf("/api/flows without a table = %d %s", code, body)
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- admin.New(admin.Options{}).Serve(ctx, ln) }()
	if code, _, _ := get(t, "http://"+ln.Addr().String()+"/healthz"); code != 200 {
		t.Fatalf("/healthz over Serve = %d", code)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("Serve after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := http.Get("http://" + ln.Addr().String() + "/healthz"); err == nil {
		t.Error("listener still answers after Serve returned")
	}
}

func TestValidateListen(t *testing.T) {
	icpt := []netip.Addr{netip.MustParseAddr("169.254.77.77"), netip.MustParseAddr("fdc5:1ce0:77::77")}
	for _, tc := range []struct {
		listen string
		err    string
	}{
		{"127.0.0.1:9090", ""},
		{"0.0.0.0:9090", `admin.listen "0.0.0.0:9090": an unspecified address listens on every address`},
		{"[::]:9090", "bind a specific address such as 127.0.0.1:9090"},
		{"[::ffff:0.0.0.0]:9090", "bind a specific address such as"},
		{"198.18.0.1:9090", ""},
		{"[::1]:9090", ""},
		{"169.254.77.77:9090", `admin.listen "169.254.77.77:9090": is the intercept address`},
		{"[fdc5:1ce0:77::77]:9090", "is the intercept address"},
		{"localhost:9090", `admin.listen "localhost:9090": must be ip:port, e.g. 127.0.0.1:9090`},
		{":9090", "must be ip:port"},
	} {
		err := admin.ValidateListen(tc.listen, icpt...)
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ValidateListen(%q) = %v, want %q", tc.listen, err, tc.err)
		}
	}
}

// As an attacker on the network (a pod that is not selected, another
// node): the admin listener on the node's address answers /metrics and
// the probes, and refuses the flows API, which names every workload's
// processes and destinations; a loopback peer reads it.
func TestAPIOnlyFromLoopback(t *testing.T) {
	tb := flows.New(flows.Options{})
	tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: workload.Identity{PID: 7, Comm: "secret-job"}, Host: "internal.example", Decision: audit.DecisionAllow})
	m := metrics.New(metrics.Options{})
	h := admin.New(admin.Options{Registry: m.Registry(), Flows: tb}).Handler()
	for _, tc := range []struct {
		peer, path string
		code       int
	}{
		{"198.51.100.7:40000", admin.FlowsPath, http.StatusForbidden},
		{"198.51.100.7:40000", admin.FlowsPath + "?x=1", http.StatusForbidden},
		{"198.51.100.7:40000", "/api/other", http.StatusForbidden},
		{"[2001:db8::7]:40000", admin.FlowsPath, http.StatusForbidden},
		{"[::ffff:198.51.100.7]:40000", admin.FlowsPath, http.StatusForbidden},
		{"not-an-address", admin.FlowsPath, http.StatusForbidden},
		{"198.51.100.7:40000", "/metrics", http.StatusOK},
		{"198.51.100.7:40000", "/healthz", http.StatusOK},
		{"198.51.100.7:40000", "/readyz", http.StatusOK},
		{"127.0.0.1:40000", admin.FlowsPath, http.StatusOK},
		{"[::1]:40000", admin.FlowsPath, http.StatusOK},
		{"[::ffff:127.0.0.1]:40000", admin.FlowsPath, http.StatusOK},
		{"127.0.0.1:40000", "/api/other", http.StatusNotFound},
	} {
		r := httptest.NewRequest("GET", tc.path, nil)
		r.RemoteAddr = tc.peer
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.code {
			t.Errorf("GET %s from %s: %d, want %d", tc.path, tc.peer, w.Code, tc.code)
		}
		if w.Code == http.StatusForbidden && strings.Contains(w.Body.String(), "secret-job") {
			t.Errorf("GET %s from %s: the refusal leaks the table", tc.path, tc.peer)
		}
	}
}
