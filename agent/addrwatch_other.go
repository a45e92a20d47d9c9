//go:build !linux

package agent

import (
	"log/slog"

	"github.com/sluicehq/sluice/config"
)

// Ready returns an error: the agent needs Linux.
func (a *Agent) Ready() error { return errNotSupported }

// Restorations is always 0.
func (a *Agent) Restorations() uint64 { return 0 }

// CleanupWith returns an error: the agent needs Linux.
func CleanupWith(cfg config.Agent, log *slog.Logger, o CleanupOptions) error { return errNotSupported }
