//go:build !linux

package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"syscall"

	"github.com/sluicehq/sluice/config"
)

var errNotSupported = fmt.Errorf("sluice agent: not supported on %s (needs Linux with eBPF and cgroup v2)", runtime.GOOS)

// Agent is not available on this OS.
type Agent struct{}

// Start returns an error: the agent needs Linux.
func Start(ctx context.Context, cfg config.Agent, h Handler, log *slog.Logger, opts Options) (*Agent, error) {
	return nil, errNotSupported
}

// SelectCgroup returns an error: the agent needs Linux.
func (a *Agent) SelectCgroup(path string) error { return errNotSupported }

// ReleaseCgroup returns an error: the agent needs Linux.
func (a *Agent) ReleaseCgroup(path string) error { return errNotSupported }

// Close does nothing.
func (a *Agent) Close() error { return nil }

// Drops is always 0.
func (a *Agent) Drops() uint64 { return 0 }

// EgressDrops is always 0.
func (a *Agent) EgressDrops() uint64 { return 0 }

// MapErrors returns nothing.
func (a *Agent) MapErrors() map[string]uint64 { return nil }

// Intercepted returns nothing.
func (a *Agent) Intercepted() []string { return nil }

// InterceptAddrs returns nothing.
func (a *Agent) InterceptAddrs() (v4, v6 netip.Addr) { return }

// Cleanup returns an error: the agent needs Linux.
func Cleanup(cfg config.Agent, log *slog.Logger) error { return errNotSupported }

// MarkControl returns a Control function that fails: SO_MARK is Linux only.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error { return errors.Join(errNotSupported) }
}
