package test

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// rootfsPackages are the Debian packages of the e2e container image, on
// top of debootstrap's minbase.
var rootfsPackages = []string{"curl", "ca-certificates"}

// runtimePackages add the language runtimes whose TLS clients the CA
// trust tests run in containers: Python, Node.js and a JDK (java runs a
// single-file source program, which needs the compiler module the JRE
// lacks). A second image, cached under its own tag: the first build
// takes one to three minutes (a 500 MB image).
var runtimePackages = append(append([]string{}, rootfsPackages...), "python3", "nodejs", "openjdk-17-jdk-headless")

const (
	rootfsSuite  = "bookworm"
	rootfsMirror = "http://deb.debian.org/debian"
)

// rootfsImage returns the tag of a container image whose root
// filesystem debootstrap built from Debian packages (no registry is
// reachable here) on top of minbase, building it the first time: the tag
// names the suite and the packages, so a run that finds it reuses it (it is never
// removed; `docker rmi` it to rebuild). Builders on this machine take
// turns through a lock.
func rootfsImage(t *testing.T, docker string, packages []string) string {
	t.Helper()
	sum := sha256.Sum256([]byte(rootfsSuite + " " + strings.Join(packages, ",")))
	tag := "sluice-e2e-rootfs:" + rootfsSuite + "-" + hex.EncodeToString(sum[:6])
	if exec.Command(docker, "image", "inspect", tag).Run() == nil {
		return tag
	}
	lock, err := os.OpenFile("/tmp/sluice-e2e-rootfs.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if exec.Command(docker, "image", "inspect", tag).Run() == nil {
		return tag // another builder made it meanwhile
	}
	debootstrap := RequireTool(t, "debootstrap")
	dir, err := os.MkdirTemp("", "sluice-rootfs")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	root := dir + "/root"
	t.Logf("building %s with debootstrap (cached for later runs)", tag)
	out, err := exec.Command(debootstrap, "--variant=minbase", "--include="+strings.Join(packages, ","),
		rootfsSuite, root, rootfsMirror).CombinedOutput()
	if err != nil {
		t.Fatalf("debootstrap: %v\n%s", err, tail(string(out), 2000))
	}
	// Docs and apt lists make a quarter of the tree and nothing reads them.
	for _, p := range []string{"/usr/share/doc", "/usr/share/man", "/usr/share/locale", "/var/lib/apt/lists", "/var/cache/apt"} {
		_ = os.RemoveAll(root + p)
	}
	tar := exec.Command("tar", "-C", root, "-c", ".")
	imp := exec.Command(docker, "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "-", tag)
	pipe, err := tar.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	imp.Stdin = pipe
	if err := tar.Start(); err != nil {
		t.Fatal(err)
	}
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("docker import: %v\n%s", err, out)
	}
	if err := tar.Wait(); err != nil {
		t.Fatalf("tar of the rootfs: %v", err)
	}
	return tag
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
