package test

import (
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent"
)

// The agent's event reader waits for the ring buffer in the Go netpoller,
// never in a blocking epoll_wait. A goroutine in a blocking system call
// keeps its P (the runtime's right to run Go code) until sysmon takes it
// back, up to 10 ms later, and with GOMAXPROCS=1 (an agent under a
// one-CPU limit) the proxy in the same process ran only between the
// reader's waits: 1,700 requests a second through `sluice run` instead of
// about 15,000 (bench-peers h1 at 32 connections). Seen from inside, the
// reader's goroutine is parked in "IO wait", not in "syscall"; and a
// denied connect still wakes it at once: its event arrives long before
// the reader's next periodic look (EventWait, 3 s here).
func TestAgentEventReaderWaitsInNetpoller(t *testing.T) {
	e := newAgentEnv(t)
	up := e.tp.Hosts[1]
	e.cfg.DenyCIDRs = []netip.Prefix{netip.PrefixFrom(up.IP4, 32)}
	e.opts.EventWait = 3 * time.Second
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	states := map[string]int{}
	for i := 0; i < 40; i++ {
		time.Sleep(3 * time.Millisecond)
		if s := goroutineState("sluice/agent.(*Agent).readEvents("); s != "" {
			states[s]++
		}
	}
	t.Logf("the event reader's goroutine in 40 looks, 3 ms apart: %v", states)
	if states["IO wait"] < 30 || states["syscall"] > 4 {
		t.Errorf("event reader states %v: want it parked in IO wait (at least 30 of 40 looks), in a system call at most 4 times", states)
	}

	dst := netip.AddrPortFrom(up.IP4, 80)
	for i := 0; i < 3; i++ {
		r := e.client(dst, clientOpts{host: 0, inCgroup: true})
		if r.Errno != "EPERM" {
			t.Fatalf("connect %v: %+v, want EPERM", dst, r)
		}
		ev, found := e.waitEventFor(500*time.Millisecond, func(x agent.Event) bool { return x.PID == r.PID })
		switch {
		case !found:
			t.Errorf("denied connect %d to %v: no event within 500 ms of the client's return: the denial did not wake the reader", i, dst)
		case ev.Verdict != agent.Denied || ev.Dst != dst:
			t.Errorf("denied connect %d to %v: event %+v, want a denial", i, dst, ev)
		}
	}
}

// goroutineState is the scheduling state ("IO wait", "syscall",
// "runnable", …) of the first goroutine whose stack holds fn, or "" when
// none does.
func goroutineState(fn string) string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, fn) {
			continue
		}
		head, _, _ := strings.Cut(g, "\n") // goroutine 12 [IO wait, 2 minutes]:
		_, state, _ := strings.Cut(head, "[")
		state, _, _ = strings.Cut(state, "]")
		state, _, _ = strings.Cut(state, ",")
		return state
	}
	return ""
}

// An event's Time is when the kernel decided the connect, not when the
// reader read it: a direct connect does not wake the reader, which finds
// its event at its next look (EventWait, 1.5 s here), and the event still
// carries a time between the client's start and its return.
func TestAgentEventTimeIsTheConnects(t *testing.T) {
	e, dst := newDirectEventEnv(t, 1500*time.Millisecond)
	started := time.Now()
	r, returned := e.directClient(dst)
	ev, found := e.waitEventFor(3*time.Second, func(x agent.Event) bool { return x.PID == r.PID })
	seen := time.Now()
	if !found || ev.Verdict != agent.Direct || ev.Dst != dst {
		t.Fatalf("event %+v (found %v), want a direct connect to %v", ev, found, dst)
	}
	// The clocks' offset is read apart from the kernel's time: allow 5 ms.
	const slack = 5 * time.Millisecond
	if ev.Time.Before(started.Add(-slack)) || ev.Time.After(returned.Add(slack)) {
		t.Errorf("event time %s, want between the client's start %s and return %s (the event was seen %s after the return)",
			ev.Time.Format(time.StampMicro), started.Format(time.StampMicro), returned.Format(time.StampMicro), seen.Sub(returned))
	}
}

// An idle agent does not look at the ring buffer every EventWait: a look
// that finds nothing parks the reader, and the next event, which lands in
// an empty ring, wakes it at once, each time the agent falls idle. A
// parked reader looks only every 30 EventWaits (a minute here), so an
// event seen within a second was a wake-up, and one seen after the
// reader's next look (2 s here) would mean it never parked. Close ends a
// parked reader's wait.
func TestAgentParkedReaderIsWokenByTheNextEvent(t *testing.T) {
	e, dst := newDirectEventEnv(t, 2*time.Second)
	for i := range 2 {
		time.Sleep(2500 * time.Millisecond) // a look found nothing: parked
		r, returned := e.directClient(dst)
		ev, found := e.waitEventFor(5*time.Second, func(x agent.Event) bool { return x.PID == r.PID })
		after := time.Since(returned)
		switch {
		case !found:
			t.Fatalf("idle %d: no event of the direct connect to %v within 5 s: the parked reader was not woken", i, dst)
		case ev.Verdict != agent.Direct || ev.Dst != dst:
			t.Fatalf("idle %d: event %+v, want a direct connect to %v", i, ev, dst)
		case after > time.Second:
			t.Errorf("idle %d: event seen %v after the connect, want under a second (a parked reader woken by it)", i, after)
		}
		t.Logf("idle %d: event seen %v after the connect", i, after)
	}
	// Close reads what is left and stops the reader at once, parked or
	// not: it does not wait for a parked reader's next look.
	time.Sleep(2500 * time.Millisecond)
	start := time.Now()
	if err := e.ag.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close of an agent with a parked reader took %v, want it to end the reader's wait", d)
	}
}

// directClient connects from the test's cgroup to dst, a port not
// intercepted, and fails the test unless the client reached it
// directly; it returns the client's result and when it returned.
func (e *agentEnv) directClient(dst netip.AddrPort) (clientResult, time.Time) {
	e.t.Helper()
	r := e.client(dst, clientOpts{host: 0, inCgroup: true})
	returned := time.Now()
	if r.Data != "direct "+dst.String() {
		e.t.Fatalf("client %+v, want it to reach %v directly", r, dst)
	}
	return r, returned
}

// newDirectEventEnv starts an agent that intercepts the test's cgroup
// and looks at the ring every wait while events come. dst is a port of a
// test host that is not intercepted: a connect there is sent direct, an
// event that does not wake the reader.
func newDirectEventEnv(t *testing.T, wait time.Duration) (*agentEnv, netip.AddrPort) {
	e := newAgentEnv(t)
	e.opts.EventWait = wait
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	return e, netip.AddrPortFrom(e.tp.Hosts[1].IP4, 9999)
}
