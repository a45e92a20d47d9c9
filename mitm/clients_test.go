package mitm

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
)

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func TestClientGateAuthenticate(t *testing.T) {
	sum := sha256.Sum256([]byte("s3cret"))
	bc, err := bcrypt.GenerateFromPassword([]byte("b-pass"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users, err := parseUsers([]byte("# users\n\nalice:wonder:land\nbob:sha256:" + hex.EncodeToString(sum[:]) + "\ncarol:" + string(bc) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	g := &clientGate{users: users, verified: map[string][32]byte{}}
	for _, tc := range []struct {
		name, header, user, reason string
	}{
		{"plain password (may hold colons)", basic("alice", "wonder:land"), "alice", ""},
		{"sha256", basic("bob", "s3cret"), "bob", ""},
		{"bcrypt", basic("carol", "b-pass"), "carol", ""},
		{"bcrypt again, remembered", basic("carol", "b-pass"), "carol", ""},
		{"bcrypt wrong after a right one", basic("carol", "b-pas"), "", audit.ReasonProxyAuthInvalid},
		{"missing", "", "", audit.ReasonProxyAuthMissing},
		{"wrong password", basic("alice", "wonder"), "", audit.ReasonProxyAuthInvalid},
		{"sha256 digest as the password", basic("bob", hex.EncodeToString(sum[:])), "", audit.ReasonProxyAuthInvalid},
		{"unknown user", basic("mallory", "wonder:land"), "", audit.ReasonProxyAuthInvalid},
		{"not basic", "Bearer abc", "", audit.ReasonProxyAuthInvalid},
		{"bad base64", "Basic !!!", "", audit.ReasonProxyAuthInvalid},
		{"lower-case scheme", "basic " + base64.StdEncoding.EncodeToString([]byte("alice:wonder:land")), "alice", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user, reason := g.authenticate(tc.header)
			if user != tc.user || reason != tc.reason {
				t.Errorf("authenticate(%q) = %q, %q; want %q, %q", tc.header, user, reason, tc.user, tc.reason)
			}
		})
	}
}

func TestParseUsersErrors(t *testing.T) {
	for _, tc := range []struct{ name, file, want string }{
		{"no colon", "alice\n", "line 1: want name:password"},
		{"empty secret", "alice:\n", "line 1: want name:password"},
		{"bad name", "al ice:x\n", `line 1: user "al ice"`},
		{"name with slash", "a/b:x\n", `user "a/b"`},
		{"twice", "alice:x\n#\nalice:y\n", `line 3: user "alice" is listed twice`},
		{"short sha256", "bob:sha256:abcd\n", "64 hex digits"},
		{"bad bcrypt", "carol:$2y$xx\n", "not a bcrypt hash"},
		{"empty", "# nobody\n", "no users"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseUsers([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseUsers: %v, want an error with %q", err, tc.want)
			}
			if strings.Contains(tc.file, ":y") && strings.Contains(err.Error(), ":y") {
				t.Errorf("error shows a secret: %v", err)
			}
		})
	}
}

func TestClientGateAllowAddr(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cidrs []string
		addr  string
		want  bool
	}{
		{"empty: everyone", nil, "203.0.113.9", true},
		{"inside", []string{"127.0.0.1/32", "10.0.0.0/8"}, "10.1.2.3", true},
		{"outside", []string{"127.0.0.1/32"}, "127.0.0.2", false},
		{"v4-mapped v6 client", []string{"127.0.0.0/8"}, "::ffff:127.0.0.5", true},
		{"v6 inside", []string{"fd00::/8"}, "fd00::1", true},
		{"v6 outside", []string{"127.0.0.0/8"}, "::1", false},
		{"unmasked range", []string{"10.1.2.3/8"}, "10.9.9.9", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := newClientGate(config.Clients{AllowCIDRs: tc.cidrs})
			if err != nil {
				t.Fatal(err)
			}
			if got := g.allowAddr(netip.MustParseAddr(tc.addr)); got != tc.want {
				t.Errorf("allowAddr(%s) with %v = %v, want %v", tc.addr, tc.cidrs, got, tc.want)
			}
		})
	}
}
