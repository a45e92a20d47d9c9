package mitm

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/pcap"
	"github.com/sluicehq/sluice/policy"
)

// TestCaptureRedactsSecrets: the capture of an HTTP/1.1 exchange holds
// neither the Authorization value, nor the cookie, nor an AWS key in the
// body, unless the decision says CaptureSecrets; the rest of the exchange
// is there either way.
func TestCaptureRedactsSecrets(t *testing.T) {
	const token, cookie = "Bearer my-own-token-4711", "session=c00k1e-value"
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("captureSecrets=%v", keep), func(t *testing.T) {
			tca := newTestCA(t, "upstream test CA")
			path := filepath.Join(t.TempDir(), "flows.pcapng")
			w, err := pcap.Create(path, pcap.Options{})
			if err != nil {
				t.Fatal(err)
			}
			dec := &fakeDecider{conn: func(c *policy.Conn) policy.ConnDecision {
				return policy.ConnDecision{Action: policy.Decrypt, Decision: policy.Decision{Rule: "test", Reason: "test allows", Capture: true, CaptureSecrets: keep}}
			}}
			h := newHarness(t, tca, dec, func(_ *config.Proxy, d *Deps) { d.Capture = w })
			up := startUpstream(t, tca, false, echoHandler())
			c := h.client(false)
			req, _ := http.NewRequest("POST", fmt.Sprintf("https://api.test:%d/captured", up.addr.Port()), strings.NewReader(`{"key":"`+awsKeyID+`"}`))
			req.Header.Set("Authorization", token)
			req.Header.Set("Cookie", cookie)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			c.CloseIdleConnections()
			h.stop()
			settle(w)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(raw, []byte("POST /captured HTTP/1.1")) {
				t.Fatal("the exchange is not in the capture")
			}
			for _, s := range []string{token[len("Bearer "):], "c00k1e-value", awsKeyID} {
				if bytes.Contains(raw, []byte(s)) != keep {
					t.Errorf("capture holds %q: %v, want %v", s, !keep, keep)
				}
			}
		})
	}
}

// settle waits (up to 5s) for w's packet count to stop growing: the
// capture redactor holds the last bytes of each direction back until the
// flow closes, which a connection's handler does after the harness stops.
func settle(w *pcap.Writer) {
	for last, same, i := uint64(0), 0, 0; i < 250 && same < 5; i++ {
		time.Sleep(20 * time.Millisecond)
		if n := w.Stats().Packets; n == last && n > 0 {
			same++
		} else {
			last, same = n, 0
		}
	}
}
