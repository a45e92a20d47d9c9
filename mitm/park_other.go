//go:build !linux

package mitm

import (
	"syscall"
	"time"
)

// parkSet is Linux's (an epoll set); elsewhere parked connections wait on
// a goroutine each (h1Conn.resume).
type parkSet struct{}

type parkLinks struct{}

func newParkSet() *parkSet { return nil }

func (s *parkSet) add(parkedConn, syscall.RawConn, time.Time) bool { return false }
