package mitm

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/audit"
)

func TestFramingStage(t *testing.T) {
	for _, tc := range []struct {
		name string
		h1   string // bytes the HTTP/1.1 client sent; empty: HTTP/2
		hdr  int    // size of an extra header value (HTTP/2)
		want *answerWant
	}{
		{name: "h1 plain request goes on", h1: "GET / HTTP/1.1\r\nHost: api.test\r\n\r\n"},
		{name: "h1 smuggling: Content-Length and Transfer-Encoding", h1: "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
			want: &answerWant{400, "error", "", audit.ReasonSmuggling}},
		{name: "h1 header block over the limit", h1: "GET / HTTP/1.1\r\nHost: api.test\r\nX-Big: " + strings.Repeat("a", 70000) + "\r\n\r\n",
			want: &answerWant{431, "error", "", audit.ReasonHeaderTooLarge}},
		{name: "h2 header list within the limit", hdr: 1000},
		{name: "h2 header list over the limit", hdr: 70000, want: &answerWant{431, "error", "", audit.ReasonHeaderTooLarge}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := stageFlow(t, nil)
			r := httptest.NewRequest("GET", "https://api.test/", nil)
			if tc.h1 != "" {
				f.h1 = newH1Conn(nil, f)
				f.h1.fr.feed([]byte(tc.h1))
			} else {
				r.ProtoMajor = 2
				r.Header.Set("X-Big", strings.Repeat("a", tc.hdr))
			}
			a := framingStage{}.Request(stageExchange(f, r))
			checkAnswer(t, a, tc.want)
			if a != nil && a.Reason == audit.ReasonSmuggling && !a.Close {
				t.Error("a smuggling attempt must close the connection")
			}
		})
	}
}
