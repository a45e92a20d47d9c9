package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// requireDocker fails t when the docker client or daemon is missing: with
// the gate set, the image tests never skip (.ci/run installs docker.io
// and starts dockerd).
func requireDocker(t *testing.T) string {
	t.Helper()
	docker := RequireTool(t, "docker")
	if out, err := exec.Command(docker, "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Fatalf("docker info: %v: %s\nstart dockerd as .ci/run does", err, out)
	}
	return docker
}

// docker runs the docker client and returns its stdout; it fails t on an
// error, with stderr.
func docker(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// `make image` builds an image FROM scratch that runs the static binary
// as a non-root user, labelled with the version it prints and the
// revision it was built from, and that checks a policy mounted into it.
// The containers run without a network; the image is removed at the end.
func TestImage(t *testing.T) {
	RequireE2E(t)
	bin := requireDocker(t)
	makeBin := RequireTool(t, "make")
	tag := fmt.Sprintf("sluice-e2e-%d:test", os.Getpid())
	const version = "e2e-1.2.3"
	out, err := exec.Command(makeBin, "-C", "..", "image", "IMAGE="+tag, "VERSION="+version,
		"BIN="+filepath.Join(t.TempDir(), "sluice"), "IMAGE_CTX="+filepath.Join(t.TempDir(), "ctx")).CombinedOutput()
	if err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command(bin, "rmi", "-f", tag).Run() })

	if got := docker(t, bin, "run", "--rm", "--network", "none", tag, "version"); got != "sluice "+version+"\n" {
		t.Errorf("docker run %s version = %q, want %q", tag, got, "sluice "+version+"\n")
	}
	labels := docker(t, bin, "image", "inspect", "--format",
		`{{index .Config.Labels "org.opencontainers.image.version"}} {{index .Config.Labels "org.opencontainers.image.revision"}} {{.Config.User}}`, tag)
	rev, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatalf("git rev-parse HEAD: %v", err)
	}
	if want := version + " " + strings.TrimSpace(string(rev)) + " 65532:65532\n"; labels != want {
		t.Errorf("labels and user = %q, want %q", labels, want)
	}

	// A policy from the host, read by the image's non-root user.
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(e2ePolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := docker(t, bin, "run", "--rm", "--network", "none", "-v", dir+":/p:ro", tag, "policy", "check", "/p/policy.yaml"); !strings.Contains(got, "/p/policy.yaml: ok") {
		t.Errorf("policy check in the image: %q", got)
	}
	// A broken one fails, naming the problem.
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("version: 1\nmdoe: audit\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--rm", "--network", "none", "-v", dir+":/p:ro", tag, "policy", "check", "/p/bad.yaml")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "mdoe") {
		t.Errorf("policy check of a broken policy: %v\n%s", err, out)
	}
}
