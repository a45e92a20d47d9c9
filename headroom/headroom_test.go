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
		// Nothing marked yet: the runtime's minimum heap (4 MiB × GOGC/100)
		// is what holds the goal at the headroom.
		{"no cycle yet", 100, 64 * mib, 0, 0, 1600},
		// 4 MiB live, 1 MiB of stacks and globals: 4 + 5 × 12.8 = 4 + 64.
		{"small heap", 100, 64 * mib, 4 * mib, 1 * mib, 1280},
		// 10 MiB and 2 MiB need 64/12 = 5.33, rounded up.
		{"rounds up", 100, 64 * mib, 10 * mib, 2 * mib, 534},
		// 1 MiB live would need 6,400%, whose minimum heap is 256 MiB.
		{"capped at the minimum heap", 100, 64 * mib, 1 * mib, 0, 1625},
		{"as much live as the headroom", 100, 64 * mib, 64 * mib, 0, 100},
		{"more live than the headroom", 100, 64 * mib, 100 * mib, 2 * mib, 100},
		{"GOGC above the headroom's percent", 400, 64 * mib, 20 * mib, 0, 400},
		{"GOGC below 100", 50, 64 * mib, 200 * mib, 0, 50},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Percent(c.base, c.headroom, c.live, c.roots); got != c.want {
				t.Errorf("Percent(%d, %d MiB, %d MiB, %d MiB) = %d, want %d", c.base, c.headroom/mib, c.live/mib, c.roots/mib, got, c.want)
			}
		})
	}
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
	runtime.GC()
	without := churn(256 * mib)
	h := Start(64*mib, nil)
	if h == nil {
		t.Fatal("Start(64 MiB) = nil")
	}
	defer h.Stop()
	runtime.GC()
	with := churn(256 * mib)
	t.Logf("collections while allocating 256 MiB: %d with Go's pacing, %d with 64 MiB of headroom", without, with)
	if with > 8 {
		t.Errorf("%d collections with 64 MiB of headroom, want at most 8 (256 MiB / 64 MiB, and some slack)", with)
	}
	if without < 3*with {
		t.Errorf("%d collections with Go's pacing against %d with headroom: it made no difference", without, with)
	}
}

func TestYieldsToLargeHeap(t *testing.T) {
	h := Start(32*mib, nil)
	if h == nil {
		t.Fatal("Start(32 MiB) = nil")
	}
	defer h.Stop()
	live := make([][]byte, 48)
	for i := range live {
		live[i] = make([]byte, mib)
	}
	waitGOGC(t, 100) // 48 MiB live is more than 32 MiB of headroom: GOGC's own goal
	runtime.KeepAlive(live)
	live = nil
	runtime.GC()
	runtime.GC()
	// The heap small again: the headroom's percent again.
	deadline := time.Now().Add(5 * time.Second)
	for got, _ := gcState(); got <= 400; got, _ = gcState() {
		if time.Now().After(deadline) {
			t.Fatalf("GOGC = %d with the heap small again, want the headroom's percent, above 400", got)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStopRestoresGOGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(150))
	h := Start(64*mib, nil)
	if h == nil {
		t.Fatal("Start(64 MiB) = nil")
	}
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
	if h := Start(Min-1, nil); h != nil {
		h.Stop()
		t.Error("Start below Min returned a Headroom")
	}
	h := Start(64*mib, nil)
	if h == nil {
		t.Fatal("Start(64 MiB) = nil")
	}
	if g := Start(64*mib, nil); g != nil {
		g.Stop()
		t.Error("a second Start while one runs returned a Headroom")
	}
	h.Stop()

	old := debug.SetGCPercent(-1) // GOGC=off
	defer debug.SetGCPercent(old)
	if h := Start(64*mib, nil); h != nil {
		h.Stop()
		t.Error("Start with GOGC=off returned a Headroom")
	}
	if got, _ := gcState(); got != -1 {
		t.Errorf("GOGC = %d, want it left off", got)
	}
}
