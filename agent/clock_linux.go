package agent

import (
	"time"

	"github.com/sluicehq/sluice/audit"
)

// clockTick is how often the agent advances sluice_clock, the hooks'
// measure of how long a redirected connect has held its origin slot
// without establishing (ORIGIN_CLAIM_TICKS in bpf/sluice.c): a load of a
// map the hooks read anyway, where the kernel's clock cost a helper call
// on every redirected connect.
const clockTick = time.Minute

// runClock advances sluice_clock by one every clockTick until the agent
// stops; load set it to 1. While no agent runs (fail-closed hooks left
// attached) it stands still, and claims are not taken back.
func (a *Agent) runClock() {
	defer a.wg.Done()
	t := time.NewTicker(clockTick)
	defer t.Stop()
	for n := uint64(2); ; n++ {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
		if err := a.objs.SluiceClock.Put(uint32(0), n); err != nil {
			a.log.Warn("advance the hooks' clock", audit.KeyError, err)
		}
	}
}
