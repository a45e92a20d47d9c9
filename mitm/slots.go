package mitm

import (
	"fmt"
	"sync"

	"github.com/sluicehq/sluice/workload"
)

// slots bounds the client connections served at once: in all
// (proxy.maxConnections) and per workload
// (proxy.maxConnectionsPerWorkload), so that one workload holding
// thousands of idle connections can't starve the others.
type slots struct {
	all chan struct{}
	per int

	mu   sync.Mutex
	used map[string]int
}

func newSlots(all, per int) *slots {
	return &slots{all: make(chan struct{}, all), per: per, used: map[string]int{}}
}

// slotKey is who a connection counts against: the workload's name, or its
// client address when it has none (the explicit proxy's clients).
func slotKey(id *workload.Identity) string {
	if n := id.Name(); n != "unknown" || !id.Client.IsValid() {
		return n
	}
	return id.Client.Addr().String()
}

// acquire takes a slot for key; when it can't, why says which bound.
func (s *slots) acquire(key string) (ok bool, why string) {
	s.mu.Lock()
	if s.used[key] >= s.per {
		s.mu.Unlock()
		return false, fmt.Sprintf("more than proxy.maxConnectionsPerWorkload (%d) connections at once from %s", s.per, key)
	}
	s.used[key]++
	s.mu.Unlock()
	select {
	case s.all <- struct{}{}:
		return true, ""
	default:
		s.release0(key)
		return false, fmt.Sprintf("more than proxy.maxConnections (%d) connections at once", cap(s.all))
	}
}

// rekey moves one slot from old to key (a connection whose workload
// became known), unless key holds its share already.
func (s *slots) rekey(old, key string) (ok bool, why string) {
	if old == key {
		return true, ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used[key] >= s.per {
		return false, fmt.Sprintf("more than proxy.maxConnectionsPerWorkload (%d) connections at once from %s", s.per, key)
	}
	s.used[key]++
	if s.used[old]--; s.used[old] <= 0 {
		delete(s.used, old)
	}
	return true, ""
}

// release gives back key's slot.
func (s *slots) release(key string) {
	<-s.all
	s.release0(key)
}

func (s *slots) release0(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used[key]--; s.used[key] <= 0 {
		delete(s.used, key)
	}
}

// inUse is how many slots key holds.
func (s *slots) inUse(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used[key]
}
