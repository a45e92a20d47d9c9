package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// sluiceBin is the binary built once for the suite (empty when the suite
// is gated off).
var sluiceBin string

func TestMain(m *testing.M) {
	if url := os.Getenv("SLUICE_E2E_GET"); url != "" {
		os.Exit(goClient(url))
	}
	if servers := os.Getenv("SLUICE_E2E_RESOLVE"); servers != "" {
		os.Exit(goResolve(servers))
	}
	if os.Getenv("SLUICE_E2E_CONNECT_LOOP") == "1" {
		os.Exit(connectLoop())
	}
	if spec := os.Getenv("SLUICE_E2E_EXEC_CONNECT"); spec != "" {
		os.Exit(execConnect(spec))
	}
	if os.Getenv("SLUICE_E2E") == "1" {
		dir, err := os.MkdirTemp("", "sluice-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		sluiceBin = filepath.Join(dir, "sluice")
		out, err := exec.Command("go", "build", "-o", sluiceBin, "../cmd/sluice").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build sluice: %v\n%s", err, out)
			os.Exit(1)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}
