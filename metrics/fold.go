package metrics

import "sync"

// Other is the label value that every value beyond a label's limit folds
// into, so that a workload that connects to a million hostnames cannot
// grow the scrape without bound.
const Other = "other"

// folder admits the first max distinct values of one label and maps every
// later one to Other. Admission is first come, first served and never
// expires: a process restart resets it. Empty values map to empty (the
// caller picks a placeholder).
//
// A value seen before is found without a lock (seen is read on every
// record; written at most max times).
type folder struct {
	max  int
	seen sync.Map // string → struct{}
	mu   sync.Mutex
	n    int // values in seen, under mu
}

func newFolder(max int) *folder {
	return &folder{max: max}
}

func (f *folder) fold(v string) string {
	v, _ = f.admit(v)
	return v
}

// admit is fold, also reporting whether v was admitted just now (its
// first sight within the bound).
func (f *folder) admit(v string) (string, bool) {
	if v == Other {
		return v, false
	}
	if _, ok := f.seen.Load(v); ok {
		return v, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.seen.Load(v); ok {
		return v, false
	}
	if f.n >= f.max {
		return Other, false
	}
	f.seen.Store(v, struct{}{})
	f.n++
	return v, true
}

// oneOf returns v when it is in the fixed set, else def.
func oneOf(v, def string, set ...string) string {
	for _, s := range set {
		if v == s {
			return v
		}
	}
	return def
}

// methods are the request methods kept as label values; anything else a
// client sends becomes "OTHER".
var methods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
