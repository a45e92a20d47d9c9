package node

import (
	"fmt"
	"log/slog"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
)

// fileReserve is the descriptors kept apart from client connections and
// their upstreams: the admin listener and its clients, the audit files,
// the agent's maps and links, policy reloads. So a workload that opens
// connections without end runs into proxy.maxConnections, never into the
// process's descriptor limit, and /metrics still answers.
const fileReserve = 1024

// filesNeeded is the open-file limit maxConns connections need: one for
// the client's connection and one for its upstream's, and the reserve.
func filesNeeded(maxConns int) uint64 { return 2*uint64(maxConns) + fileReserve }

// fitFiles makes the open-file limit hold proxy.maxConnections: it raises
// the soft RLIMIT_NOFILE to what they need. Where the hard limit is lower,
// a maxConnections the config file set is refused, naming the fix; the
// default is lowered to fit (and said so).
func fitFiles(p *config.Proxy, set config.Keys, log *slog.Logger, lim fileLimits) error {
	soft, hard, err := lim.get()
	if err != nil {
		return nil // not on Linux: nothing to fit
	}
	need := filesNeeded(p.MaxConnections)
	if hard < need {
		if set.Has("proxy.maxConnections") {
			return fmt.Errorf("proxy.maxConnections %d: needs %d open files (two per connection and %d in reserve), and the hard RLIMIT_NOFILE is %d; raise it (ulimit -Hn, LimitNOFILE= in the service unit, the container runtime's nofile limit) or set proxy.maxConnections to at most %d",
				p.MaxConnections, need, fileReserve, hard, maxConnsFor(hard))
		}
		m := maxConnsFor(hard)
		if m < 1 {
			return fmt.Errorf("open files: the hard RLIMIT_NOFILE is %d, less than the %d Sluice keeps in reserve; raise it (ulimit -Hn, LimitNOFILE=)", hard, fileReserve)
		}
		log.Info("proxy.maxConnections lowered to fit the open-file limit", audit.KeyFrom, p.MaxConnections, audit.KeyTo, m, audit.KeyRlimitHard, hard)
		p.MaxConnections = m
		p.MaxConnectionsPerWorkload = min(p.MaxConnectionsPerWorkload, m)
		need = filesNeeded(m)
	}
	if soft < need {
		if err := lim.set(need, hard); err != nil {
			return fmt.Errorf("raise the soft RLIMIT_NOFILE from %d to %d: %w", soft, need, err)
		}
	}
	return nil
}

// fileLimits reads and sets the process's RLIMIT_NOFILE.
type fileLimits interface {
	get() (soft, hard uint64, err error)
	set(soft, hard uint64) error
}

// processLimits are this process's limits.
type processLimits struct{}

func (processLimits) get() (soft, hard uint64, err error) { return fileLimit() }
func (processLimits) set(soft, hard uint64) error         { return setFileLimit(soft, hard) }

func maxConnsFor(hard uint64) int {
	if hard <= fileReserve {
		return 0
	}
	return int((hard - fileReserve) / 2)
}
