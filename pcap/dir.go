package pcap

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Capture starts flows; *Writer (one file) and *Dir (a file per flow)
// implement it, and so may a nil of either (capture off).
type Capture interface {
	NewFlow(m FlowMeta) *Flow
}

var (
	_ Capture = (*Writer)(nil)
	_ Capture = (*Dir)(nil)
)

// Dir writes each flow to its own pcapng file in a directory, named
// <time>_<workload>_<host>_<n>.pcapng. Options.MaxBytes caps each file;
// MaxFiles caps how many files it creates (later flows are not recorded
// and are counted in Stats.Flows only). Safe for concurrent use; a nil
// *Dir records nothing.
type Dir struct {
	dir      string
	o        Options
	maxFiles int

	mu    sync.Mutex
	n     int
	st    Stats
	files []string
}

// DefaultMaxFiles bounds a Dir.
const DefaultMaxFiles = 1000

// NewDir writes flows under dir (created 0700: the files hold decrypted
// secrets). maxFiles <= 0 takes DefaultMaxFiles.
func NewDir(dir string, o Options, maxFiles int) (*Dir, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pcap dir %s: %w", dir, err)
	}
	if maxFiles <= 0 {
		maxFiles = DefaultMaxFiles
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Dir{dir: dir, o: o, maxFiles: maxFiles}, nil
}

// NewFlow creates the flow's file; Close on the flow closes the file. When
// MaxFiles is reached or the file cannot be created, the flow is nil (its
// methods do nothing): Stats.Flows counts it, Files does not list it.
func (d *Dir) NewFlow(m FlowMeta) *Flow {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	d.st.Flows++
	if d.n >= d.maxFiles {
		d.mu.Unlock()
		return nil
	}
	d.n++
	name := fmt.Sprintf("%s_%s_%s_%d.pcapng", d.o.Now().UTC().Format("20060102T150405Z"),
		fileSafe(m.Workload), fileSafe(m.Host), d.n)
	d.mu.Unlock()

	w, err := Create(filepath.Join(d.dir, name), d.o)
	if err != nil {
		return nil
	}
	d.mu.Lock()
	d.files = append(d.files, name)
	d.mu.Unlock()
	f := w.NewFlow(m)
	f.onClose = func() {
		_ = w.Close()
		st := w.Stats()
		d.mu.Lock()
		d.st.Packets += st.Packets
		d.st.Bytes += st.Bytes
		d.st.DroppedPackets += st.DroppedPackets
		d.st.DroppedBytes += st.DroppedBytes
		d.mu.Unlock()
	}
	return f
}

// Stats sums the closed flows' files (Flows counts every flow started).
func (d *Dir) Stats() Stats {
	if d == nil {
		return Stats{}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st
}

// Files are the names created so far, in order.
func (d *Dir) Files() []string {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.files...)
}

// fileSafe keeps letters, digits, '.', '-' and '_', maps the rest to '_',
// and bounds the length, so a workload or host name can't escape the
// directory or make an unwieldy name.
func fileSafe(s string) string {
	if s == "" {
		return "-"
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == '.':
			if b.Len() == 0 {
				b.WriteRune('_') // no leading dot: no hidden files, no ".."
			} else {
				b.WriteRune(r)
			}
		default:
			b.WriteRune('_')
		}
		if b.Len() >= 64 {
			break
		}
	}
	return b.String()
}
