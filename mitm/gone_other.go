//go:build !linux

package mitm

import "syscall"

// goneSet is Linux's (an epoll set); elsewhere every HTTP/1.1 client
// connection is served by net/http's server.
type goneSet struct{}

func newGoneSet() *goneSet { return nil }

func (s *goneSet) add(*h1Conn) bool { return false }

func (s *goneSet) remove(*h1Conn, uint64, syscall.RawConn) {}
