package mitm

import (
	"net/http"
	"reflect"
	"testing"
)

// removeHopHeaders and h1Dropped match the map's keys against
// isHopHeader's names as they are, so each must be spelled as net/http
// stores it.
func TestHopHeadersCanonical(t *testing.T) {
	for _, k := range []string{"connection", "proxy-connection", "keep-alive", "proxy-authenticate",
		"proxy-authorization", "te", "transfer-encoding", "upgrade"} {
		if c := http.CanonicalHeaderKey(k); !isHopHeader(c) {
			t.Errorf("isHopHeader(%q) is false: its name must be spelled canonically", c)
		}
	}
}

func TestRemoveHopHeaders(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      http.Header
		keepWS  bool
		want    http.Header
		upgrade string
	}{
		{
			name: "hop-by-hop and proxy fields go, end-to-end stay",
			in: http.Header{"Connection": {"close, X-Hop"}, "X-Hop": {"1"}, "Keep-Alive": {"5"}, "Transfer-Encoding": {"chunked"},
				"Proxy-Authorization": {"Basic x"}, "Proxy-Foo": {"y"}, "Accept": {"*/*"}, "Upgrade": {"h2c"}},
			want: http.Header{"Accept": {"*/*"}},
		},
		{
			name: "TE trailers is kept as trailers",
			in:   http.Header{"Te": {"gzip, trailers"}, "Accept": {"*/*"}},
			want: http.Header{"Te": {"trailers"}, "Accept": {"*/*"}},
		},
		{
			name:    "WebSocket upgrade is returned",
			in:      http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Key": {"k"}},
			keepWS:  true,
			want:    http.Header{"Sec-Websocket-Key": {"k"}},
			upgrade: "websocket",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.in.Clone()
			up := removeHopHeaders(h, tc.keepWS)
			if !reflect.DeepEqual(h, tc.want) || up != tc.upgrade {
				t.Errorf("got %v, upgrade %q; want %v, upgrade %q", h, up, tc.want, tc.upgrade)
			}
		})
	}
}
