package agent

import (
	"math"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/net/publicsuffix"

	"github.com/sluicehq/sluice/audit"
)

// The exfiltration guard: DNS carries data out in the names asked (a
// query for <encoded data>.attacker.example reaches attacker.example's
// servers whatever the answer). The guard flags, per workload, queries
// that come too fast, names with a label too long or too random, and a
// parent domain asked for too many different names in a minute. Its state
// is bounded: an LRU of workloads (rate) and of {workload, parent} pairs
// (unique names), each pair holding at most limit+1 names.

// ExfilOptions configure the exfiltration guard (DNSOptions.Exfil). A
// zero limit turns its check off.
type ExfilOptions struct {
	// Enforce denies flagged queries; false only records them
	// (would_deny).
	Enforce bool
	// QueriesPerSecond is the rate of queries one workload may send (a
	// token bucket with a burst of twice the rate).
	QueriesPerSecond float64
	// MaxLabelLength is the longest label (between dots) allowed.
	MaxLabelLength int
	// MaxLabelEntropy is the largest Shannon entropy, in bits per
	// character, of a label of at least EntropyMinLength characters.
	MaxLabelEntropy  float64
	EntropyMinLength int
	// UniqueSubdomainsPerMinute is how many different names under one
	// parent domain (the registrable domain, by the public suffix list)
	// one workload may ask in a minute.
	UniqueSubdomainsPerMinute int
	// TrackSize bounds the workloads and {workload, parent} pairs
	// tracked; 0 means 4096.
	TrackSize int
}

// exfilGuard applies ExfilOptions. Safe for concurrent use.
type exfilGuard struct {
	o       ExfilOptions
	mu      sync.Mutex
	buckets *lru.Cache[string, *tokenBucket]
	parents *lru.Cache[string, *uniqueWindow]
}

type tokenBucket struct {
	tokens float64
	last   time.Time
}

// uniqueWindow is the different names asked under one parent in the
// minute that began at start.
type uniqueWindow struct {
	start time.Time
	names map[string]struct{}
}

func newExfilGuard(o ExfilOptions) *exfilGuard {
	if o.TrackSize <= 0 {
		o.TrackSize = 4096
	}
	b, _ := lru.New[string, *tokenBucket](o.TrackSize)
	p, _ := lru.New[string, *uniqueWindow](o.TrackSize)
	return &exfilGuard{o: o, buckets: b, parents: p}
}

// check counts the query of name (lower case, no trailing dot) by the
// workload wl at now and returns the reason it is flagged, "" when it is
// not. Every check runs and counts, the first reason found is returned.
func (g *exfilGuard) check(wl, name string, now time.Time) string {
	var why string
	if g.o.QueriesPerSecond > 0 && !g.take(wl, now) {
		why = audit.ReasonDNSExfilRate
	}
	if r := labelReason(name, g.o.MaxLabelLength, g.o.MaxLabelEntropy, g.o.EntropyMinLength); r != "" && why == "" {
		why = r
	}
	if g.o.UniqueSubdomainsPerMinute > 0 && !g.unique(wl, name, now) && why == "" {
		why = audit.ReasonDNSExfilSubdomains
	}
	return why
}

// take takes a token from wl's bucket.
func (g *exfilGuard) take(wl string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	burst := 2 * g.o.QueriesPerSecond
	b, ok := g.buckets.Get(wl)
	if !ok {
		b = &tokenBucket{tokens: burst, last: now}
		g.buckets.Add(wl, b)
	}
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(burst, b.tokens+dt*g.o.QueriesPerSecond)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// unique records name under its parent for wl and reports whether the
// parent stays within its limit of different names this minute.
func (g *exfilGuard) unique(wl, name string, now time.Time) bool {
	parent := parentDomain(name)
	if parent == name {
		return true // the parent itself is no subdomain
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	k := wl + "\x00" + parent
	w, ok := g.parents.Get(k)
	if !ok || now.Sub(w.start) >= time.Minute || now.Before(w.start) {
		w = &uniqueWindow{start: now, names: map[string]struct{}{}}
		g.parents.Add(k, w)
	}
	if _, seen := w.names[name]; seen {
		return len(w.names) <= g.o.UniqueSubdomainsPerMinute
	}
	if len(w.names) <= g.o.UniqueSubdomainsPerMinute { // bounded: limit+1 names
		w.names[name] = struct{}{}
	}
	return len(w.names) <= g.o.UniqueSubdomainsPerMinute
}

// parentDomain is the registrable domain of name (example.co.uk for
// a.b.example.co.uk), the last two labels when the public suffix list
// has no answer.
func parentDomain(name string) string {
	if p, err := publicsuffix.EffectiveTLDPlusOne(name); err == nil {
		return p
	}
	labels := strings.Split(name, ".")
	if len(labels) <= 2 {
		return name
	}
	return strings.Join(labels[len(labels)-2:], ".")
}

// labelReason flags a label longer than maxLen or, when at least minLen
// long, with an entropy above maxEntropy (0 turns a check off).
func labelReason(name string, maxLen int, maxEntropy float64, minLen int) string {
	for l := range strings.SplitSeq(name, ".") {
		if maxLen > 0 && len(l) > maxLen {
			return audit.ReasonDNSExfilLabelLength
		}
		if maxEntropy > 0 && len(l) >= max(minLen, 1) && labelEntropy(l) > maxEntropy {
			return audit.ReasonDNSExfilEntropy
		}
	}
	return ""
}

// labelEntropy is the Shannon entropy of l's bytes, in bits per byte.
func labelEntropy(l string) float64 {
	var counts [256]int
	for i := 0; i < len(l); i++ {
		counts[l[i]]++
	}
	n := float64(len(l))
	var h float64
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / n
			h -= p * math.Log2(p)
		}
	}
	return h
}
