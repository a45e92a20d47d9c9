package mitm

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/audit"
)

func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Upstream-Proto", r.Proto)
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-Via", r.Header.Get("Via"))
		w.Header().Set("X-Seen-UA", r.Header.Get("User-Agent"))
		w.Header().Set("X-Seen-Conn-Hdr", r.Header.Get("X-Hop"))
		fmt.Fprintf(w, "hello %s %s %s body=%s", r.Method, r.URL.Path, r.Proto, body)
	})
}

func TestGoClientThroughExplicitProxy(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	for _, tc := range []struct {
		name         string
		upH2, cliH2  bool
		wantUpstream string
		wantClient   string
		wantALPN     string
	}{
		{"h1", false, false, "HTTP/1.1", "HTTP/1.1", ""},
		{"h2", true, true, "HTTP/2.0", "HTTP/2.0", "h2"},
		{"client h2, upstream h1 only", false, true, "HTTP/1.1", "HTTP/1.1", "http/1.1"},
		{"client h1, upstream h2", true, false, "HTTP/1.1", "HTTP/1.1", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, tca, tc.upH2, echoHandler())
			h := newHarness(t, tca, nil)
			c := h.client(tc.cliH2)
			for i := 0; i < 3; i++ {
				req, _ := http.NewRequest("POST", fmt.Sprintf("https://api.test:%d/p/%d", up.addr.Port(), i), strings.NewReader("abc"))
				if !tc.cliH2 {
					req.Header.Set("Connection", "X-Hop")
					req.Header.Set("X-Hop", "must not pass")
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body := readAll(t, resp.Body)
				resp.Body.Close()
				if want := fmt.Sprintf("hello POST /p/%d %s body=abc", i, tc.wantUpstream); body != want {
					t.Fatalf("body %q, want %q", body, want)
				}
				if resp.Proto != tc.wantClient {
					t.Errorf("client proto %s, want %s", resp.Proto, tc.wantClient)
				}
				if got := resp.Header.Get("X-Seen-Host"); got != fmt.Sprintf("api.test:%d", up.addr.Port()) {
					t.Errorf("upstream saw Host %q", got)
				}
				if v := resp.Header.Get("X-Seen-Via") + resp.Header.Get("X-Seen-UA") + resp.Header.Get("X-Seen-Conn-Hdr"); !tc.cliH2 && v != "Go-http-client/1.1" {
					t.Errorf("upstream saw Via+UA+X-Hop %q, want only the client's own User-Agent", v)
				}
				if resp.TLS == nil || resp.TLS.PeerCertificates[0].Issuer.CommonName == "upstream test CA" {
					t.Errorf("client did not see a Sluice leaf")
				}
			}
			rec := h.recs.wait(t, "for /p/2", func(r audit.Record) bool { return r.Kind == audit.KindHTTP && r.Path == "/p/2" })
			if rec.Host != "api.test" || rec.SNI != "api.test" || rec.TLS != audit.TLSDecrypted || rec.Method != "POST" ||
				rec.Status != 200 || rec.Source != "upstream" || rec.Decision != "allow" || rec.Rule != "test" ||
				rec.BytesIn != 3 || rec.BytesOut == 0 || rec.Port != up.addr.Port() || rec.DstIP.String() != "127.0.0.1" ||
				rec.UpstreamAddr != up.addr.String() || rec.ALPN != tc.wantALPN || rec.Proto != tc.wantClient ||
				!rec.Workload.Client.IsValid() || rec.Duration <= 0 || rec.UpstreamDuration <= 0 {
				t.Errorf("record %+v", rec)
			}
			conns := h.dec.connections()
			if len(conns) != 1 || conns[0].Host != "api.test" || !conns[0].TLS || len(conns[0].Addrs) != 1 || conns[0].Port != up.addr.Port() {
				t.Errorf("Connection calls %+v, want one for api.test with its address", conns)
			}
			if n := len(h.dec.requests()); n != 3 {
				t.Errorf("Request called %d times, want 3", n)
			}
		})
	}
}

func curlPath(t *testing.T) string {
	p, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl not installed")
		}
		t.Skip("curl not installed")
	}
	return p
}

func TestCurlThroughExplicitProxy(t *testing.T) {
	curl := curlPath(t)
	tca := newTestCA(t, "upstream test CA")
	for _, tc := range []struct {
		name    string
		upH2    bool
		flag    string
		wantVer string
		wantUp  string
	}{
		{"http1.1", true, "--http1.1", "1.1", "HTTP/1.1"},
		{"http2", true, "--http2", "2", "HTTP/2.0"},
		{"http2 to h1-only upstream", false, "--http2", "1.1", "HTTP/1.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, tca, tc.upH2, echoHandler())
			h := newHarness(t, tca, nil)
			u := fmt.Sprintf("https://api.test:%d/curl", up.addr.Port())
			out, err := exec.Command(curl, "-sS", "--max-time", "20", tc.flag, "--proxy", h.url.String(),
				"--cacert", h.bundle, "-d", "xyz", "-w", "\n%{http_version}", u).CombinedOutput()
			if err != nil {
				t.Fatalf("curl: %v\n%s", err, out)
			}
			want := fmt.Sprintf("hello POST /curl %s body=xyz\n%s", tc.wantUp, tc.wantVer)
			if string(out) != want {
				t.Fatalf("curl printed %q, want %q", out, want)
			}
		})
	}
}

func TestPythonURLLibThroughExplicitProxy(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 not installed")
		}
		t.Skip("python3 not installed")
	}
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, true, echoHandler())
	h := newHarness(t, tca, nil)
	script := `
import os, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=os.environ["SLUICE_CA"])
with urllib.request.urlopen(sys.argv[1], context=ctx, timeout=20) as r:
    sys.stdout.write(str(r.status) + " " + r.read().decode())
`
	u := fmt.Sprintf("https://api.test:%d/py", up.addr.Port())
	cmd := exec.Command(py, "-c", script, u)
	cmd.Env = append(os.Environ(), "HTTPS_PROXY="+h.url.String(), "https_proxy="+h.url.String(), "NO_PROXY=", "no_proxy=", "SLUICE_CA="+h.bundle)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	if want := "200 hello GET /py HTTP/1.1 body="; string(out) != want {
		t.Fatalf("python printed %q, want %q", out, want)
	}
}
