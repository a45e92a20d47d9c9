package mitm

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/pcap"
	"github.com/sluicehq/sluice/policy"
)

// TestCaptureDecryptedFlows: with Deps.Capture set, the decrypted HTTP/1.1
// and HTTP/2 exchanges of connections whose decision asks for capture land
// in a pcapng file that tshark dissects as HTTP; others are not written.
func TestCaptureDecryptedFlows(t *testing.T) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tshark not installed")
		}
		t.Skip("tshark not installed")
	}
	tca := newTestCA(t, "upstream test CA")
	path := filepath.Join(t.TempDir(), "flows.pcapng")
	w, err := pcap.Create(path, pcap.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dec := &fakeDecider{conn: func(c *policy.Conn) policy.ConnDecision {
		return policy.ConnDecision{Action: policy.Decrypt, Decision: policy.Decision{Rule: "test", Reason: "test allows", Capture: c.Host == "api.test"}}
	}}
	h := newHarness(t, tca, dec, func(_ *config.Proxy, d *Deps) { d.Capture = w })
	for _, h2 := range []bool{false, true} {
		up := startUpstream(t, tca, h2, echoHandler())
		c := h.client(h2)
		resp, err := c.Post(fmt.Sprintf("https://other.test:%d/not-captured-h2-%v", up.addr.Port(), h2), "text/plain", strings.NewReader("other-body"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.CloseIdleConnections()
	}
	for _, h2 := range []bool{false, true} {
		up := startUpstream(t, tca, h2, echoHandler())
		c := h.client(h2)
		resp, err := c.Post(fmt.Sprintf("https://api.test:%d/captured-h2-%v", up.addr.Port(), h2), "text/plain", strings.NewReader("secret-body"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.CloseIdleConnections()
	}
	h.stop() // every client connection, and so every capture flow, is closed
	settle(w)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tshark, "-r", path, "-Y", "http.request || http2.type == 1",
		"-T", "fields", "-e", "http.request.uri", "-e", "http2.header.value").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	for _, want := range []string{"/captured-h2-false", "/captured-h2-true"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("tshark did not find %s in:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "/not-captured") {
		t.Errorf("a connection whose decision did not ask for capture was captured:\n%s", out)
	}
}
