package mitm

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// goneSet watches the sockets of the connections the fast loop serves
// (h1fast.go) for the client's close: one epoll set, edge-triggered on
// EPOLLRDHUP (and the hang-ups and errors epoll always reports), never on
// incoming data, so a keep-alive client's requests wake nothing. A close
// reported while a handler runs starts the read that tells whether the
// client left (goneWatch). As the parkSet, its goroutine and descriptor
// exist only while something is watched, and for h1AcceptIdle after.
type goneSet struct {
	mu sync.Mutex
	epollSet
	conns map[uint64]*h1Conn
}

func newGoneSet() *goneSet {
	return &goneSet{epollSet: epollSet{name: "watched connections"}, conns: make(map[uint64]*h1Conn)}
}

// add watches c's socket; false when it can't be watched (not a socket
// of Sluice's own wrappers, or no epoll set).
func (s *goneSet) add(c *h1Conn) bool {
	sock := rawSocketOf(c.Conn)
	if sock == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ep == nil {
		rc, ok := s.open()
		if !ok {
			return false
		}
		go s.run(s.ep, rc)
	}
	tok, ok := s.epollSet.add(sock, unix.EPOLLRDHUP|unix.EPOLLET)
	if !ok {
		return false
	}
	if len(s.conns) == 0 {
		_ = s.ep.SetReadDeadline(time.Time{})
	}
	s.conns[tok] = c
	g := &c.gw
	g.mu.Lock()
	g.set, g.token, g.sock = s, tok, sock
	g.hup = false // a close reported under an earlier token is not this watch's
	g.mu.Unlock()
	return true
}

// remove stops watching c (token tok).
func (s *goneSet) remove(c *h1Conn, tok uint64, sock syscall.RawConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[tok] != c {
		return
	}
	delete(s.conns, tok)
	if s.ep != nil {
		s.del(sock)
		if len(s.conns) == 0 {
			_ = s.ep.SetReadDeadline(time.Now().Add(h1AcceptIdle))
		}
	}
}

func (s *goneSet) run(ep *os.File, rc syscall.RawConn) {
	events := make([]unix.EpollEvent, 64)
	type hitConn struct {
		c   *h1Conn
		tok uint64
	}
	var hit []hitConn
	for {
		n, err := epollWait(rc, events, s.name)
		s.mu.Lock()
		for _, ev := range events[:n] {
			tok := eventToken(ev)
			if c := s.conns[tok]; c != nil {
				hit = append(hit, hitConn{c, tok})
			}
		}
		closing := false
		if err != nil && (!errors.Is(err, os.ErrDeadlineExceeded) || len(s.conns) == 0) {
			// Idle for h1AcceptIdle, or the set failed: what is still
			// watched is no longer (its reads still fail when the
			// client leaves; only the wake for it is lost).
			closing = true
			for tok, c := range s.conns {
				delete(s.conns, tok)
				g := &c.gw
				g.mu.Lock()
				if g.set == s {
					g.set, g.token, g.sock = nil, 0, nil
				}
				g.mu.Unlock()
			}
			s.close(ep)
		}
		s.mu.Unlock()
		// Outside s.mu (hupped may start a read): a connection
		// removed meanwhile is told apart by its token.
		for i, h := range hit {
			h.c.gw.hupped(h.c, h.tok)
			hit[i] = hitConn{}
		}
		hit = hit[:0]
		if closing {
			return
		}
	}
}
