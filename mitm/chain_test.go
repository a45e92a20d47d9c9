package mitm

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// probeStage is a throwaway stage: it notes each call, sees what the
// stages before it decided, adds a header both ways and upper-cases the
// response body.
type probeStage struct {
	name string
	mu   *sync.Mutex
	log  *[]string
}

func (s probeStage) Name() string { return s.name }

func (s probeStage) note(what string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	*s.log = append(*s.log, what)
}

func (s probeStage) Request(x *Exchange) *Answer {
	s.note(fmt.Sprintf("request %s decided=%v rule=%s", s.name, x.decided, x.Decision.Rule))
	x.Req.Header.Add("X-Stage", s.name)
	return nil
}

func (s probeStage) Response(x *Exchange, resp *http.Response) *Answer {
	s.note("response " + s.name)
	resp.Header.Add("X-Stage-Response", s.name)
	resp.Body = upperBody{resp.Body}
	return nil
}

type upperBody struct{ io.ReadCloser }

func (u upperBody) Read(p []byte) (int, error) {
	n, err := u.ReadCloser.Read(p)
	copy(p, bytes.ToUpper(p[:n]))
	return n, err
}

// insertStage puts s into the chain right after the stage named after.
func insertStage(t *testing.T, p *Proxy, after string, s Stage) {
	t.Helper()
	i := slices.IndexFunc(p.stages, func(x Stage) bool { return x.Name() == after })
	if i < 0 {
		t.Fatalf("no stage %q in the chain", after)
	}
	p.stages = slices.Insert(p.stages, i+1, s)
}

// TestChainRunsAddedStagesInOrder adds two stages to the chain, one before
// the policy and one after it, and sees them run in order on the request
// and on the response, over HTTP/1.1 and HTTP/2: what they add to the
// request reaches the upstream, and what they do to the response reaches
// the client.
func TestChainRunsAddedStagesInOrder(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			up := startUpstream(t, tca, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "stages seen upstream: %s", strings.Join(r.Header.Values("X-Stage"), ","))
			}))
			var mu sync.Mutex
			var log []string
			h := newHarnessWith(t, tca, nil, func(p *Proxy) {
				insertStage(t, p, "target", probeStage{"early", &mu, &log})
				insertStage(t, p, "size", probeStage{"late", &mu, &log})
			})

			resp, err := h.client(h2).Get(fmt.Sprintf("https://api.test:%d/x", up.addr.Port()))
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp.Body)
			resp.Body.Close()
			if body != "STAGES SEEN UPSTREAM: EARLY,LATE" {
				t.Errorf("client got %q; want the upstream to see both stages' header, in order, and the body upper-cased", body)
			}
			if got := resp.Header.Values("X-Stage-Response"); !slices.Equal(got, []string{"early", "late"}) {
				t.Errorf("response headers from stages %q, want [early late]", got)
			}
			mu.Lock()
			defer mu.Unlock()
			want := []string{
				"request early decided=false rule=", // before the policy stage
				"request late decided=true rule=test",
				"response early",
				"response late",
			}
			if !slices.Equal(log, want) {
				t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(log, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// answerStage answers every request itself.
type answerStage struct{}

func (answerStage) Name() string { return "answer" }
func (answerStage) Request(*Exchange) *Answer {
	return &Answer{Status: http.StatusTeapot, Body: []byte("short and stout\n"), Decision: audit.DecisionDeny, Rule: "teapot", Reason: "stage answered"}
}

// TestStageAnswerEndsTheChain: an answer goes to the client and into the
// record; the stages after it and the upstream never see the request.
func TestStageAnswerEndsTheChain(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var upstreamCalls atomic.Int32
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { upstreamCalls.Add(1) }))
	dec := &fakeDecider{}
	h := newHarnessWith(t, tca, dec, func(p *Proxy) { insertStage(t, p, "target", answerStage{}) })
	resp, err := h.client(false).Get(fmt.Sprintf("https://api.test:%d/tea", up.addr.Port()))
	if err != nil {
		t.Fatal(err)
	}
	if b := readAll(t, resp.Body); resp.StatusCode != 418 || b != "short and stout\n" {
		t.Errorf("got %d %q", resp.StatusCode, b)
	}
	resp.Body.Close()
	rec := h.recs.wait(t, "teapot", func(r audit.Record) bool { return r.Path == "/tea" })
	if rec.Decision != "deny" || rec.Rule != "teapot" || rec.Reason != "stage answered" || rec.Status != 418 || rec.Source != "sluice" {
		t.Errorf("record %+v", rec)
	}
	if n := len(dec.requests()); n != 0 || upstreamCalls.Load() != 0 {
		t.Errorf("policy asked %d times, upstream called %d times; want neither after an answer", n, upstreamCalls.Load())
	}
}

var _ = policy.Allow
