package headroom

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

const mib = 1 << 20

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		name                  string
		base                  int
		headroom, live, roots uint64
		want                  int
	}{
		// 15 MiB live and 2 MiB of stacks and globals need 64/17 = 3.76,
		// rounded up: 15 + 17 × 3.77 = 79 MiB, 64 above what is live.
		{"rounds up", 100, 64 * mib, 15 * mib, 2 * mib, 377},
		{"32 MiB live", 100, 64 * mib, 32 * mib, 0, 200},
		// 4 MiB live would need 1,280%: at most 400 (see maxPercent).
		{"small heap", 100, 64 * mib, 4 * mib, 1 * mib, 400},
		{"no cycle yet", 100, 64 * mib, 0, 0, 400},
		// 4 MiB of headroom over 1 MiB: the minimum heap (4 MiB × 1.25)
		// is live + headroom.
		{"capped at the minimum heap", 100, 4 * mib, 1 * mib, 0, 125},
		{"as much live as the headroom", 100, 64 * mib, 64 * mib, 0, 100},
		{"more live than the headroom", 100, 64 * mib, 100 * mib, 2 * mib, 100},
		{"GOGC above the cap", 800, 64 * mib, 4 * mib, 0, 800},
		{"GOGC below 100", 50, 64 * mib, 200 * mib, 0, 50},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Percent(c.base, c.headroom, c.live, c.roots); got != c.want {
				t.Errorf("Percent(%d, %d MiB, %d MiB, %d MiB) = %d, want %d", c.base, c.headroom/mib, c.live/mib, c.roots/mib, got, c.want)
			}
		})
	}
}

// pinGOGC sets GOGC to v for the test, whatever the environment says,
// and puts the process's own back after it.
func pinGOGC(t *testing.T, v int) {
	old := debug.SetGCPercent(v)
	t.Cleanup(func() { debug.SetGCPercent(old) })
}

// start starts h for the test and stops it after, also when the test
// fails first.
func start(t *testing.T, bytes int64) *Headroom {
	t.Helper()
	h := Start(bytes, nil)
	if h == nil {
		t.Fatalf("Start(%d MiB) = nil", bytes/mib)
	}
	t.Cleanup(h.Stop)
	return h
}

// gcState reads what the runtime itself says: the GOGC in force and the
// collections so far.
func gcState() (gogc int, cycles uint64) {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64()), s[1].Value.Uint64()
}

// churn allocates n bytes of short-lived 4 KiB objects and returns the
// collections that ran meanwhile.
func churn(n int) uint64 {
	_, before := gcState()
	var keep []byte
	for i := 0; i < n/4096; i++ {
		keep = make([]byte, 4096)
		keep[0] = byte(i)
	}
	runtime.KeepAlive(keep)
	_, after := gcState()
	return after - before
}

// waitGOGC waits for the cleanup (which runs after a cycle, on its own
// goroutine) to have set want.
func waitGOGC(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := gcState()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GOGC = %d, want %d", got, want)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFewerCollections(t *testing.T) {
	pinGOGC(t, 100)
	runtime.GC()
	without := churn(256 * mib)
	start(t, 64*mib)
	runtime.GC()
	with := churn(256 * mib)
	t.Logf("collections while allocating 256 MiB: %d with Go's pacing, %d with 64 MiB of headroom", without, with)
	// Little is live here: the cap of 4 times the live heap, not the
	// 64 MiB, sets the pace, still a fraction of Go's own.
	if without < 3*with {
		t.Errorf("%d collections with Go's pacing against %d with headroom: it made no difference", without, with)
	}
}

func TestYieldsToLargeHeap(t *testing.T) {
	pinGOGC(t, 100)
	start(t, 32*mib)
	live := make([][]byte, 48)
	for i := range live {
		live[i] = make([]byte, mib)
	}
	waitGOGC(t, 100) // 48 MiB live is more than 32 MiB of headroom: GOGC's own goal
	runtime.KeepAlive(live)
	live = nil
	runtime.GC()
	runtime.GC()
	waitGOGC(t, maxPercent) // the heap small again: the headroom's percent again
}

func TestStopRestoresGOGC(t *testing.T) {
	pinGOGC(t, 150)
	h := start(t, 64*mib)
	if got, _ := gcState(); got <= 150 {
		t.Fatalf("GOGC = %d after Start, want the headroom's percent, above 150", got)
	}
	h.Stop()
	h.Stop()
	runtime.GC() // a cleanup armed before Stop runs now and must change nothing
	time.Sleep(50 * time.Millisecond)
	if got, _ := gcState(); got != 150 {
		t.Fatalf("GOGC = %d after Stop, want the 150 the process had", got)
	}
}

func TestStartRefuses(t *testing.T) {
	pinGOGC(t, 100)
	if h := Start(Min-1, nil); h != nil {
		h.Stop()
		t.Error("Start below Min returned a Headroom")
	}
	h := start(t, 64*mib)
	if g := Start(64*mib, nil); g != nil {
		g.Stop()
		t.Error("a second Start while one runs returned a Headroom")
	}
	h.Stop()

	debug.SetGCPercent(-1) // GOGC=off (pinGOGC puts it back)
	if h := Start(64*mib, nil); h != nil {
		h.Stop()
		t.Error("Start with GOGC=off returned a Headroom")
	}
	if got, _ := gcState(); got != -1 {
		t.Errorf("GOGC = %d, want it left off", got)
	}
}
