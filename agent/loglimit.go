package agent

import (
	"sync"
	"time"
)

// logLimit lets a warning through at most once per every; the next one
// let through says how many were held back meanwhile. Anyone on the node
// can reach the proxy's and the DNS server's listeners without being a
// workload the kernel named: each such connection or query is answered
// (and a query audited) as before, but it must not be able to fill the
// agent's log.
type logLimit struct {
	every time.Duration

	mu   sync.Mutex
	next time.Time // the earliest the next warning goes out
	held int       // warnings held back since the last one let through
}

// noOriginLogEvery is how often a warning about a peer without origin
// is logged.
const noOriginLogEvery = time.Second

// allow reports whether a warning at now is logged, and how many were
// held back before it.
func (l *logLimit) allow(now time.Time) (held int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.held++
		return 0, false
	}
	held, l.held = l.held, 0
	l.next = now.Add(l.every)
	return held, true
}
