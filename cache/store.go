package cache

import (
	"container/list"
	"sync"
)

// Store is an LRU of entries bounded by their total size in bytes. Safe
// for concurrent use.
type Store struct {
	max int64

	mu    sync.Mutex
	used  int64
	order *list.List // front: most recently used
	items map[string]*list.Element
}

type item struct {
	key  string
	e    *Entry
	size int64
}

// NewStore returns a store holding at most maxBytes of entries.
func NewStore(maxBytes int64) *Store {
	return &Store{max: maxBytes, order: list.New(), items: map[string]*list.Element{}}
}

// Get returns the entry stored under key and marks it recently used.
func (s *Store) Get(key string) (*Entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.items[key]
	if !ok {
		return nil, false
	}
	s.order.MoveToFront(el)
	return el.Value.(*item).e, true
}

// Put stores e under key, replacing what was there, and evicts the least
// recently used entries until the store fits. An entry larger than the
// whole store is not kept.
func (s *Store) Put(key string, e *Entry) {
	it := &item{key: key, e: e, size: e.size(key)}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.remove(key)
	if it.size > s.max {
		return
	}
	s.items[key] = s.order.PushFront(it)
	s.used += it.size
	for s.used > s.max {
		s.remove(s.order.Back().Value.(*item).key)
	}
}

// Remove drops the entry under key, if any.
func (s *Store) Remove(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.remove(key)
}

func (s *Store) remove(key string) {
	el, ok := s.items[key]
	if !ok {
		return
	}
	s.order.Remove(el)
	delete(s.items, key)
	s.used -= el.Value.(*item).size
}

// Stats are a store's size.
type Stats struct {
	Entries int
	Bytes   int64
}

// Stats returns the store's current size.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Entries: len(s.items), Bytes: s.used}
}
