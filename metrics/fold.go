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
type folder struct {
	max  int
	mu   sync.Mutex
	seen map[string]struct{}
}

func newFolder(max int) *folder {
	return &folder{max: max, seen: make(map[string]struct{})}
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
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.seen[v]; ok {
		return v, false
	}
	if len(f.seen) >= f.max {
		return Other, false
	}
	f.seen[v] = struct{}{}
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
