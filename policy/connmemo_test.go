package policy

import (
	"context"
	"net/netip"
	"reflect"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// Request keeps what it works out from the connection alone in the Conn
// (connMemo). Every request on one Conn must still be decided as if
// asked afresh: by another engine (a reload), for another host, after
// the addresses changed, and on a copy for another workload.
func TestRequestConnMemo(t *testing.T) {
	const guarded = `
version: 1
rules:
  - name: tester-local
    workloads: {comm: [tester]}
    destinations: {cidrs: ["127.0.0.0/8"]}
    action: allow
`
	e := mustParse(t, guarded)
	reloaded := mustParse(t, "version: 1\nssrf: {allowCIDRs: [\"127.0.0.0/8\"]}\n")
	tester, other := workload.Identity{Comm: "tester"}, workload.Identity{Comm: "curl"}
	loop := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	resolver := []netip.Addr{netip.MustParseAddr("1.1.1.1")}
	ctx := context.Background()
	ask := func(e *Engine, c *Conn, host string) Decision {
		t.Helper()
		return e.Request(ctx, &Request{Conn: c, Method: "GET", Host: host, Path: "/"})
	}
	want := func(name string, d Decision, denied bool, reason string) {
		t.Helper()
		if d.Denied() != denied || (reason != "" && d.Reason != reason) {
			t.Errorf("%s: got denied=%v %q (%s), want denied=%v %q", name, d.Denied(), d.Reason, d.Rule, denied, reason)
		}
	}

	c := &Conn{Workload: tester, Host: "", Addrs: loop, Port: 8443}
	want("exempt tester", ask(e, c, ""), false, "")
	want("exempt tester again", ask(e, c, ""), false, "")
	cp := c.OpaqueCopy() // a copy, for another workload, must not take the tester's exemption
	cp.Opaque, cp.Workload = false, other
	want("copy for another workload", ask(e, cp, ""), true, audit.ReasonLoopback)
	c2 := &Conn{Workload: other, Addrs: loop, Port: 8443}
	want("other workload", ask(e, c2, ""), true, audit.ReasonLoopback)
	want("other workload, reloaded engine", ask(reloaded, c2, ""), false, "")
	want("other workload, first engine again", ask(e, c2, ""), true, audit.ReasonLoopback)

	r := &Conn{Workload: other, Addrs: resolver, Port: 443}
	want("resolver by address", ask(e, r, ""), true, audit.ReasonPublicResolver)
	want("resolver's address, another host", ask(e, r, "api.example"), false, "")
	want("resolver by address again", ask(e, r, ""), true, audit.ReasonPublicResolver)
	want("resolver by name", ask(e, r, "dns.google"), true, audit.ReasonPublicResolver)
	want("resolver by address, after the name", ask(e, r, ""), true, audit.ReasonPublicResolver)
	// The memo checks the port, addresses and names again, although a
	// Conn's fields do not change once given to a Decider (Conn): a
	// caller that broke that contract still gets a fresh decision.
	r.Port = 8443
	want("port changed", ask(e, r, ""), false, "")
	r.Port = 443
	r.Addrs = []netip.Addr{netip.MustParseAddr("93.184.215.14")}
	want("addresses changed", ask(e, r, ""), false, "")
	r.Names = []string{"dns.google"}
	want("names given", ask(e, r, ""), true, audit.ReasonPublicResolver)
}

// OpaqueCopy keeps every field of the Conn but Opaque, which it sets:
// a field added to Conn and forgotten there fails this test.
func TestOpaqueCopyKeepsEveryField(t *testing.T) {
	c := &Conn{}
	v := reflect.ValueOf(c).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		if !v.Type().Field(i).IsExported() {
			continue
		}
		switch f.Kind() {
		case reflect.Bool:
			f.SetBool(true)
		case reflect.String:
			f.SetString("x")
		case reflect.Uint16:
			f.SetUint(8443)
		case reflect.Slice:
			f.Set(reflect.MakeSlice(f.Type(), 1, 1))
		case reflect.Struct:
			f.Set(reflect.ValueOf(workload.Identity{Comm: "tester", PID: 7}))
		default:
			t.Fatalf("field %s of kind %s: teach this test to fill it", v.Type().Field(i).Name, f.Kind())
		}
	}
	c.Opaque = false
	cp := c.OpaqueCopy()
	if !cp.Opaque {
		t.Error("OpaqueCopy did not set Opaque")
	}
	cv := reflect.ValueOf(cp).Elem()
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if !v.Type().Field(i).IsExported() || name == "Opaque" {
			continue
		}
		if !reflect.DeepEqual(v.Field(i).Interface(), cv.Field(i).Interface()) {
			t.Errorf("OpaqueCopy dropped %s", name)
		}
	}
}
