package test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
)

// Every port is intercepted by default: HTTP on port 8080 is decided per
// request (the /admin deny applies), a server-speaks-first protocol on
// another port gets its banner at once and is relayed with an L4 record,
// and nothing goes direct.
func TestRunEveryPortIntercepted(t *testing.T) {
	e := newRunEnv(t)
	// A path rule without a port would also deny every non-HTTP flow (a
	// deny that needs HTTP can't be shown not to apply to an opaque one).
	pol := strings.Replace(e2ePolicy, "destinations: {paths: [\"/admin/**\"]}", "destinations: {ports: [8080], paths: [\"/admin/**\"]}", 1)
	if pol == e2ePolicy {
		t.Fatal("e2ePolicy changed: adjust this test")
	}
	if err := os.WriteFile(e.policy, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	web := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path)
		mu.Unlock()
		fmt.Fprintf(w, "plain %s\n", r.URL.Path)
	})}
	go web.Serve(e.api.NS.Listen(t, netip.AddrPortFrom(e.api.IP4, 8080)))
	t.Cleanup(func() { web.Close() })
	banner := e.api.NS.Listen(t, netip.AddrPortFrom(e.api.IP4, 2222))
	go func() {
		for {
			c, err := banner.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				fmt.Fprint(c, "SSH-2.0-test\r\n")
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "got %s", line)
			}(c)
		}
	}()
	curl := mustLookPath(t, "curl")
	ip := e.api.IP4.String()
	if code, out, errOut := e.run(t, curl, "-sS", "http://"+ip+":8080/v1/ok"); code != 0 || out != "plain /v1/ok\n" {
		t.Fatalf("HTTP on 8080: exit %d %q\n%s", code, out, errOut)
	}
	if code, out, _ := e.run(t, curl, "-sS", "http://"+ip+":8080/admin/users"); code != 0 || !strings.Contains(out, `"rule":"no-admin"`) {
		t.Fatalf("HTTP on 8080 to /admin: exit %d %q; want Sluice's deny", code, out)
	}
	python := mustLookPath(t, "python3")
	// The client waits for the banner before it says anything, and gives
	// up after 1.5s: less than proxy.peekTimeout (2s), so the banner must
	// not wait for the proxy to give up on the client.
	script := fmt.Sprintf(`import socket
s = socket.create_connection((%q, 2222), timeout=1.5)
f = s.makefile("rwb")
b = f.readline()
f.write(b"SSH-2.0-client\r\n"); f.flush()
print(b.decode().strip(), "|", f.readline().decode().strip())`, ip)
	code, out, errOut := e.run(t, python, "-c", script)
	if code != 0 || strings.TrimSpace(out) != "SSH-2.0-test | got SSH-2.0-client" {
		t.Fatalf("banner protocol on 2222: exit %d %q\n%s", code, out, errOut)
	}
	mu.Lock()
	if strings.Join(seen, ",") != "/v1/ok" {
		t.Errorf("the web server saw %v; want only /v1/ok", seen)
	}
	mu.Unlock()
	var l4, direct int
	for _, r := range e.records(t) {
		if r["kind"] == "l4" && r["port"] == float64(2222) && r["decision"] == "allow" && r["bytes_out"].(float64) > 0 {
			l4++
		}
		if r["kind"] == "connect" {
			direct++
		}
	}
	if l4 != 1 || direct != 0 {
		t.Errorf("%d L4 records for port 2222 (want 1), %d connect records (want none: nothing went direct)", l4, direct)
	}
	if strings.Contains(errOut, "NOT INTERCEPTED") {
		t.Errorf("summary flags a connection as not intercepted:\n%s", errOut)
	}
}
