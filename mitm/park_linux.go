package mitm

import (
	"context"
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// parkSet holds the proxy's parked connections (HTTP/1.1's and
// HTTP/2's: parkedConn) without a goroutine each: their sockets are in one epoll set, and the epoll
// descriptor itself waits in Go's netpoller (an epoll set is readable
// while one of its sockets is), so a single goroutine, blocked in no
// system call, serves them all. Each socket is registered level-triggered
// and one-shot: readable at registration (bytes that came while it was
// being parked) counts, and a woken socket reports once. The set's read
// deadline is the earliest idle deadline of a parked connection.
//
// The goroutine and the epoll descriptor exist only while something is
// parked, and for h1AcceptIdle after: an unused proxy keeps neither.
type parkSet struct {
	mu sync.Mutex
	epollSet
	conns map[uint64]parkedConn
	first parkedConn // parked connections by idle deadline, earliest first
	last  parkedConn // the latest deadline
	due   time.Time  // ep's read deadline
}

// parkLinks is what a parked connection carries for its parkSet.
type parkLinks struct {
	token      uint64 // 0: not parked
	sock       syscall.RawConn
	deadline   time.Time
	prev, next parkedConn
	stop       func() bool // the context.AfterFunc that closes it when its flow ends
}

func newParkSet() *parkSet {
	return &parkSet{epollSet: epollSet{name: "parked connections"}, conns: make(map[uint64]parkedConn)}
}

// add parks c, whose socket is sock, until its next byte, deadline (then
// c is closed) or the end of its flow's context (closed too). It reports
// false, and c stays the caller's, when the socket can't be watched.
func (s *parkSet) add(c parkedConn, sock syscall.RawConn, deadline time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ep == nil {
		rc, ok := s.open()
		if !ok {
			return false // parks on a goroutine a while
		}
		s.due = time.Time{}
		s.setDue()
		go s.run(s.ep, rc)
	}
	tok, ok := s.epollSet.add(sock, unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLONESHOT)
	if !ok {
		return false
	}
	pk := c.links()
	pk.token, pk.sock, pk.deadline = tok, sock, deadline
	s.conns[tok] = c
	s.insert(c)
	// Registered under s.mu, so a wake that takes c back finds stop set.
	pk.stop = context.AfterFunc(c.flowCtx(), func() {
		if s.remove(c) {
			c.closeParked()
		}
	})
	return true
}

// insert links c into the deadline list, from the end: connections are
// parked about in the order of their deadlines. Under s.mu.
func (s *parkSet) insert(c parkedConn) {
	pk := c.links()
	at := s.last
	for at != nil && at.links().deadline.After(pk.deadline) {
		at = at.links().prev
	}
	pk.prev = at
	if at == nil {
		pk.next, s.first = s.first, c
	} else {
		pk.next, at.links().next = at.links().next, c
	}
	if pk.next == nil {
		s.last = c
	} else {
		pk.next.links().prev = c
	}
	s.setDue()
}

// remove takes c out of the set; false if it was not in it (woken,
// expired or closed by another path first). The caller then owns c.
func (s *parkSet) remove(c parkedConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removeLocked(c)
}

func (s *parkSet) removeLocked(c parkedConn) bool {
	pk := c.links()
	if pk.token == 0 {
		return false
	}
	delete(s.conns, pk.token)
	s.del(pk.sock)
	if pk.prev == nil {
		s.first = pk.next
	} else {
		pk.prev.links().next = pk.next
	}
	if pk.next == nil {
		s.last = pk.prev
	} else {
		pk.next.links().prev = pk.prev
	}
	stop := pk.stop
	*pk = parkLinks{}
	if stop != nil {
		stop()
	}
	s.setDue()
	return true
}

// setDue moves the set's read deadline to the earliest idle deadline, or,
// with nothing parked, to when the set closes. Under s.mu.
func (s *parkSet) setDue() {
	var due time.Time
	if s.first != nil {
		due = s.first.links().deadline
	} else {
		due = time.Now().Add(h1AcceptIdle)
	}
	if due.Equal(s.due) {
		return
	}
	s.due = due
	_ = s.ep.SetReadDeadline(due)
}

// run is the set's goroutine: it hands woken connections back, closes
// expired ones, and closes the set once it has been empty for
// h1AcceptIdle.
func (s *parkSet) run(ep *os.File, rc syscall.RawConn) {
	events := make([]unix.EpollEvent, 128)
	var woken, expired []parkedConn
	for {
		n, err := epollWait(rc, events, s.name)
		s.mu.Lock()
		for _, ev := range events[:n] {
			if c := s.conns[eventToken(ev)]; c != nil && s.removeLocked(c) {
				woken = append(woken, c)
			}
		}
		closing := false
		switch {
		case err == nil:
		case !errors.Is(err, os.ErrDeadlineExceeded) || (s.first == nil && !time.Now().Before(s.due)):
			closing = true
			s.closeLocked(ep)
		default:
			now := time.Now()
			for s.first != nil && !s.first.links().deadline.After(now) {
				c := s.first
				s.removeLocked(c)
				expired = append(expired, c)
			}
			// A deadline that passed stays passed until it is set again.
			s.due = time.Time{}
			s.setDue()
		}
		s.mu.Unlock()
		for i, c := range woken {
			go c.resume()
			woken[i] = nil
		}
		for i, c := range expired {
			// Not on this goroutine: a close may wait (a TLS alert or
			// an HTTP/2 GOAWAY into a full socket), and every other
			// parked connection waits on this goroutine.
			go c.closeParked()
			expired[i] = nil
		}
		woken, expired = woken[:0], expired[:0]
		if closing {
			return
		}
	}
}

// closeLocked closes the set; what is still parked (only after a failure
// of the set itself) goes back to a goroutine each. Under s.mu.
func (s *parkSet) closeLocked(ep *os.File) {
	for s.first != nil {
		c := s.first
		s.removeLocked(c)
		go c.resume()
	}
	if s.ep == ep {
		s.due = time.Time{}
	}
	s.close(ep)
}
