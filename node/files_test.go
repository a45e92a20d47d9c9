package node

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/config"
)

type fakeLimits struct {
	soft, hard uint64
	err        error
}

func (f *fakeLimits) get() (uint64, uint64, error) { return f.soft, f.hard, f.err }
func (f *fakeLimits) set(soft, hard uint64) error  { f.soft, f.hard = soft, hard; return nil }

func TestFitFiles(t *testing.T) {
	for _, tc := range []struct {
		name             string
		soft, hard       uint64
		maxConns         int
		set              bool // the config file set proxy.maxConnections
		wantConns        int
		wantSoft         uint64
		wantErr          string
		wantPerWorkload  int
		perWorkloadStart int
	}{
		{name: "room enough: the soft limit is raised", soft: 1024, hard: 1 << 20, maxConns: 10000, wantConns: 10000, wantSoft: 21024, perWorkloadStart: 2000, wantPerWorkload: 2000},
		{name: "soft already enough: left alone", soft: 1 << 20, hard: 1 << 20, maxConns: 10000, wantConns: 10000, wantSoft: 1 << 20, perWorkloadStart: 2000, wantPerWorkload: 2000},
		{name: "default too large for the hard limit: lowered", soft: 1024, hard: 20000, maxConns: 10000, wantConns: 9488, wantSoft: 20000, perWorkloadStart: 2000, wantPerWorkload: 2000},
		{name: "lowered below the per-workload bound", soft: 1024, hard: 2048, maxConns: 10000, wantConns: 512, wantSoft: 2048, perWorkloadStart: 2000, wantPerWorkload: 512},
		{name: "set in the file and too large: refused", soft: 1024, hard: 20000, maxConns: 10000, set: true, perWorkloadStart: 2000,
			wantErr: "proxy.maxConnections 10000: needs 21024 open files (two per connection and 1024 in reserve), and the hard RLIMIT_NOFILE is 20000; raise it"},
		{name: "no room even for the reserve", soft: 512, hard: 512, maxConns: 10000, perWorkloadStart: 2000, wantErr: "less than the 1024 Sluice keeps in reserve"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim := &fakeLimits{soft: tc.soft, hard: tc.hard}
			p := config.Proxy{MaxConnections: tc.maxConns, MaxConnectionsPerWorkload: tc.perWorkloadStart}
			set := config.Keys{}
			if tc.set {
				set["proxy.maxConnections"] = true
			}
			err := fitFiles(&p, set, slog.New(slog.NewTextHandler(io.Discard, nil)), lim)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || p.MaxConnections != tc.wantConns || lim.soft != tc.wantSoft || p.MaxConnectionsPerWorkload != tc.wantPerWorkload {
				t.Fatalf("err %v, maxConnections %d, perWorkload %d, soft %d; want %d, %d, %d", err, p.MaxConnections, p.MaxConnectionsPerWorkload, lim.soft, tc.wantConns, tc.wantPerWorkload, tc.wantSoft)
			}
		})
	}
	// Where the limit can't be read (not Linux), nothing changes.
	p := config.Proxy{MaxConnections: 10}
	if err := fitFiles(&p, config.Keys{}, slog.Default(), &fakeLimits{err: errors.New("not supported")}); err != nil || p.MaxConnections != 10 {
		t.Fatalf("err %v, maxConnections %d", err, p.MaxConnections)
	}
}
