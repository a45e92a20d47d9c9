package mitm

import (
	"crypto/tls"
	"errors"
	"net"
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
	mu    sync.Mutex
	ep    *os.File
	epfd  int
	conns map[uint64]*h1Conn
	token uint64
	err   error
	pause time.Time
}

func newGoneSet() *goneSet { return &goneSet{conns: make(map[uint64]*h1Conn)} }

// add watches c's socket; false when it can't be watched (not a socket
// of Sluice's own wrappers, or no epoll set).
func (s *goneSet) add(c *h1Conn) bool {
	sock := rawSocketOf(c.Conn)
	if sock == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ep == nil && !s.open() {
		return false
	}
	s.token++
	tok := s.token
	ev := tokenEvent(unix.EPOLLRDHUP|unix.EPOLLET, tok)
	var cerr error
	if err := sock.Control(func(fd uintptr) { cerr = unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev) }); err != nil || cerr != nil {
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
		_ = sock.Control(func(fd uintptr) { _ = unix.EpollCtl(s.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
		if len(s.conns) == 0 {
			_ = s.ep.SetReadDeadline(time.Now().Add(h1AcceptIdle))
		}
	}
}

func (s *goneSet) open() bool {
	if s.err != nil && time.Now().Before(s.pause) {
		return false
	}
	ep, rc, epfd, err := openEpoll("watched connections")
	if err != nil {
		s.err, s.pause = err, time.Now().Add(h1AcceptIdle)
		return false
	}
	s.ep, s.epfd, s.err = ep, epfd, nil
	go s.run(ep, rc)
	return true
}

func (s *goneSet) run(ep *os.File, rc syscall.RawConn) {
	events := make([]unix.EpollEvent, 64)
	type hitConn struct {
		c   *h1Conn
		tok uint64
	}
	var hit []hitConn
	for {
		n, err := epollWait(rc, events, "watched connections")
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
			if s.ep == ep {
				s.ep, s.epfd = nil, -1
			}
			ep.Close()
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

// rawSocketOf follows c's wrappers (Sluice's own) down to its TCP socket;
// nil when one of them is not Sluice's own.
func rawSocketOf(c net.Conn) syscall.RawConn {
	for {
		switch w := c.(type) {
		case *peekedConn:
			c = w.Conn
		case *bufferedConn:
			c = w.Conn
		case *h1Conn:
			c = w.Conn
		case *alertWatch:
			c = w.Conn
		case *tls.Conn:
			c = w.NetConn()
		case *net.TCPConn:
			rc, err := w.SyscallConn()
			if err != nil {
				return nil
			}
			return rc
		default:
			return nil
		}
	}
}
