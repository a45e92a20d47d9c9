package policy

import (
	"context"
	"slices"
	"testing"

	"github.com/sluicehq/sluice/audit"
)

// A destination without a bound name (no SNI and no Host, an IP, a Host
// that does not resolve to the address) is matched by hosts rules through
// the names the proxy knows for its address, so leaving the name out does
// not dodge a deny by name.
func TestUnboundDestinationMatchedByKnownNames(t *testing.T) {
	e := mustParse(t, `
version: 1
rules:
  - name: no-denied
    destinations: {hosts: [denied.example, "*.evil.example"]}
    action: deny
  - name: api-admin
    destinations: {hosts: [api.example], paths: ["/admin"]}
    action: deny
`)
	if got := e.Hosts(); !slices.Equal(got, []string{"denied.example", "api.example"}) {
		t.Errorf("Hosts() = %q, want the exact names once, no wildcards", got)
	}
	for _, tc := range []struct {
		name       string
		host       string
		names      []string
		path       string
		wantConn   Action
		wantDenied bool
	}{
		{name: "no name, nothing known for the address", wantConn: Decrypt},
		{name: "no name, the address is denied.example's", names: []string{"denied.example"}, wantConn: Reject, wantDenied: true},
		{name: "an IP as the name, the address is denied.example's", host: "93.184.215.14", names: []string{"denied.example"}, wantConn: Reject, wantDenied: true},
		{name: "no name, a wildcard deny matches a known name", names: []string{"a.evil.example"}, wantConn: Reject, wantDenied: true},
		{name: "no name, the address is api.example's: per request", names: []string{"api.example"}, path: "/admin", wantConn: Decrypt, wantDenied: true},
		{name: "a bound name wins over the known ones", host: "other.example", names: []string{"denied.example"}, wantConn: Decrypt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Conn{Host: tc.host, Addrs: public, Port: 443, TLS: true, Names: tc.names}
			if tc.host == "other.example" {
				// The proxy gives names only when no name is bound.
				c.Names = nil
			}
			cd := e.Connection(context.Background(), c)
			if cd.Action != tc.wantConn {
				t.Errorf("connection: %v (%s), want %v", cd.Action, cd.Reason, tc.wantConn)
			}
			d := e.Request(context.Background(), &Request{Conn: c, Method: "GET", Host: tc.host, Path: "/" + tc.path})
			if d.Denied() != tc.wantDenied || (tc.wantDenied && d.Reason != audit.ReasonDeniedByRule) {
				t.Errorf("request: %+v, want denied %v", d, tc.wantDenied)
			}
		})
	}
}
