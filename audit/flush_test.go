package audit_test

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// writes records every Write the file underneath receives.
type writes struct {
	mu  sync.Mutex
	got []string
}

func (w *writes) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.got = append(w.got, string(p))
	return len(p), nil
}

func (w *writes) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.got...)
}

func TestFlushWriterWritesHeldLinesTogetherWithinTheInterval(t *testing.T) {
	var file writes
	f := audit.NewFlushWriter(&file, 20*time.Millisecond)
	l := audit.NewJSONLog(f)
	r := records[1].r
	start := time.Now()
	l.Record(&r)
	l.Record(&r)
	l.Record(&r)
	if got := file.all(); len(got) != 0 {
		t.Fatalf("the file got %d writes before the interval, want 0 (held)", len(got))
	}
	for len(file.all()) == 0 {
		if time.Since(start) > 5*time.Second {
			t.Fatal("nothing written 5 s after three records with a 20 ms interval")
		}
		time.Sleep(time.Millisecond)
	}
	if waited := time.Since(start); waited < 15*time.Millisecond {
		t.Errorf("written after %v, want about the 20 ms interval", waited)
	}
	got := file.all()
	line := string(r.AppendJSON(nil))
	if len(got) != 1 || got[0] != strings.Repeat(line, 3) {
		t.Fatalf("the file got %d writes %q, want the three lines in one write", len(got), got)
	}
}

func TestFlushWriterWritesAtOnceWhenFull(t *testing.T) {
	var file writes
	f := audit.NewFlushWriter(&file, time.Hour)
	line := strings.Repeat("x", 1023) + "\n"
	for range 512 {
		_, _ = f.Write([]byte(line))
	}
	got := file.all()
	if len(got) != 1 || len(got[0]) != 512*1024 {
		t.Fatalf("after 512 KiB the file got %d writes, want one of 512 KiB", len(got))
	}
}

func TestFlushWriterCloseWritesTheRest(t *testing.T) {
	var file bytes.Buffer
	f := audit.NewFlushWriter(&file, time.Hour)
	_, _ = f.Write([]byte("one\n"))
	_, _ = f.Write([]byte("two\n"))
	if file.Len() != 0 {
		t.Fatalf("written before Close: %q", file.String())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte("after\n"))
	if got, want := file.String(), "one\ntwo\nafter\n"; got != want {
		t.Fatalf("file %q, want %q (held lines at Close, later ones straight through)", got, want)
	}
}

func TestFlushWriterKeepsConcurrentLinesWhole(t *testing.T) {
	var file bytes.Buffer
	f := audit.NewFlushWriter(&file, time.Millisecond)
	l := audit.NewJSONLog(f)
	r := records[1].r
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				l.Record(&r)
			}
		})
	}
	wg.Wait()
	_ = f.Close()
	line := string(r.AppendJSON(nil))
	if got := file.String(); got != strings.Repeat(line, 8*200) {
		t.Fatalf("file holds %d bytes, want 1600 whole lines of %d", len(got), len(line))
	}
}

// blockingFile is a file whose first Write waits for release.
type blockingFile struct {
	writes
	started, release chan struct{}
	once             sync.Once
}

func (b *blockingFile) Write(p []byte) (int, error) {
	b.once.Do(func() { close(b.started); <-b.release })
	return b.writes.Write(p)
}

// A flush's write to a slow file does not hold up the other writers,
// not even when they fill another 512 KiB meanwhile: their lines go into
// the next buffer, written after it, in order.
func TestFlushWriterWritesWhileOthersWrite(t *testing.T) {
	file := &blockingFile{started: make(chan struct{}), release: make(chan struct{})}
	f := audit.NewFlushWriter(file, time.Hour)
	first := strings.Repeat("x", 1023) + "\n"
	next := strings.Repeat("y", 1023) + "\n"
	go func() {
		for range 512 { // the 512th fills 512 KiB: its Write flushes
			_, _ = f.Write([]byte(first))
		}
	}()
	<-file.started
	done := make(chan struct{})
	go func() {
		for range 520 { // past another 512 KiB while the first write waits
			_, _ = f.Write([]byte(next))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("a Write waited for another's flush to the file")
	}
	close(file.release)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got := file.all()
	if len(got) < 2 || got[0] != strings.Repeat(first, 512) || strings.Join(got[1:], "") != strings.Repeat(next, 520) {
		t.Fatalf("the file got %d writes, want the first 512 KiB, then the 520 lines written meanwhile", len(got))
	}
}

// Close (and Flush) return once a write to the file that was under way
// has ended: the node closes the file right after Close.
func TestFlushWriterCloseWaitsForAFlushUnderWay(t *testing.T) {
	file := &blockingFile{started: make(chan struct{}), release: make(chan struct{})}
	f := audit.NewFlushWriter(file, time.Hour)
	_, _ = f.Write([]byte("line\n"))
	go f.Flush() // as the timer's
	<-file.started
	closed := make(chan struct{})
	go func() { _ = f.Close(); close(closed) }()
	select {
	case <-closed:
		t.Error("Close returned while a flush was writing to the file")
	case <-time.After(300 * time.Millisecond):
	}
	close(file.release)
	<-closed
	if got := file.all(); len(got) != 1 || got[0] != "line\n" {
		t.Errorf("the file got %q", got)
	}
}
