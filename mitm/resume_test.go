package mitm

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"

	"github.com/sluicehq/sluice/audit"
	"testing"
)

// TestClientSessionResumption: a client's second connection resumes the
// TLS session of its first (the proxy's ticket keys outlive a
// connection), and is served and recorded like the first.
func TestClientSessionResumption(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok "+r.URL.Path)
	}))
	h := newHarness(t, tca, nil)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	cache := tls.NewLRUClientSessionCache(8)
	var resumed []bool
	for i := range 3 {
		tr := &http.Transport{
			Proxy: http.ProxyURL(h.url),
			TLSClientConfig: &tls.Config{RootCAs: pool, ClientSessionCache: cache,
				VerifyConnection: func(cs tls.ConnectionState) error {
					resumed = append(resumed, cs.DidResume)
					return nil
				}},
			TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
		}
		resp, err := (&http.Client{Transport: tr}).Get(fmt.Sprintf("https://api.test:%d/r%d", up.addr.Port(), i))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if got := readAll(t, resp.Body); got != fmt.Sprintf("ok /r%d", i) {
			t.Errorf("request %d: body %q", i, got)
		}
		resp.Body.Close()
		tr.CloseIdleConnections()
		h.recs.wait(t, fmt.Sprintf("record of /r%d", i), func(r audit.Record) bool { return r.Path == fmt.Sprintf("/r%d", i) && r.Status == 200 })
	}
	if len(resumed) != 3 || resumed[0] || !resumed[1] || !resumed[2] {
		t.Errorf("resumed per connection = %v, want [false true true]", resumed)
	}
}
