package policy

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Test secrets are built from pieces, so that this file holds nothing a
// secret scanner would take for a live credential.
var (
	awsKeyID    = "AKIA" + "Z7QH4M2KXW3PL5TB"
	awsSecret   = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYzq3k9Lm2Tn"
	ghRandom    = "R4nd0mT0kenB0dyF0rT3st1ngAbCdE"
	githubToken = "ghp_" + ghRandom + GitHubChecksum([]byte(ghRandom))
	openAIKey   = "sk-proj-" + "abcDEF1234567890ghij" + "T3BlbkFJ" + "klmNOP0987654321qrst"
	anthKey     = "sk-ant-" + "api03-" + strings.Repeat("aB3_xY9-", 11) + "qwertAA"
	azureKey    = base64.StdEncoding.EncodeToString([]byte(strings.Repeat("0123456789abcdef", 4)))
	jwtToken    = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" + "." + "eyJzdWIiOiIxMjM0NTY3ODkwIn0" + "." + "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	pemKey      = "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEowIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2\nQ5bFkZ1ZpXa8rYs7v9s0=\n-----END RSA PRIVATE KEY-----"
)

// findAll runs every detector over s and returns the names found.
func findAll(s string) []string {
	in := &Inspector{rules: []contentRule{{action: ActionAudit, in: [3]bool{true, true, true}, matchers: detectors}}}
	var names []string
	for _, f := range in.Scan([]byte(s), InBody, true) {
		if !slices.Contains(names, f.Detector) {
			names = append(names, f.Detector)
		}
	}
	return names
}

// TestDetectors: each detector on its secret in a realistic setting, and
// on near misses it must not take for one.
func TestDetectors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []string // detectors found; nil for none
	}{
		{"aws key id in JSON", `{"AccessKeyId":"` + awsKeyID + `"}`, []string{"aws-access-key-id"}},
		{"aws key id in a query", "/upload?key=" + awsKeyID + "&x=1", []string{"aws-access-key-id"}},
		{"aws key id, one character short", `"` + awsKeyID[:19] + `"`, nil},
		{"aws key id glued to a word", "X" + awsKeyID, nil},
		{"aws secret in an ini file", "aws_secret_access_key = " + awsSecret + "\n", []string{"aws-secret-access-key"}},
		{"aws secret, low entropy", "aws_secret_access_key = " + strings.Repeat("ab", 20) + "\n", nil},
		{"gcp service account key", `{"type":"service_account","private_key_id":"` + strings.Repeat("3f9a", 10) + `"}`, []string{"gcp-service-account-key"}},
		{"azure connection string", "DefaultEndpointsProtocol=https;AccountName=acct01;AccountKey=" + azureKey + ";EndpointSuffix=core.windows.net", []string{"azure-storage-connection-string"}},
		{"azure key too short", "AccountName=acct01;AccountKey=" + azureKey[:44], nil},
		{"github token, checksum right", "Authorization: token " + githubToken, []string{"github-token"}},
		{"github token, checksum wrong", "ghp_" + ghRandom + "AAAAAA", nil},
		{"github fine-grained token", "github_pat_" + strings.Repeat("A1b2", 5) + "Zz_" + strings.Repeat("c3D4", 14) + "xyz", []string{"github-token"}},
		{"gitlab token", `{"private_token":"glpat-` + "xR4nd0mT0kenV4lue12ab" + `"}`, []string{"gitlab-token"}},
		{"slack bot token", "Authorization: Bearer xoxb-" + "1234567890-1234567890123-" + "AbCdEfGhIjKlMnOpQrStUvWx", []string{"slack-token"}},
		{"slack webhook", "https://hooks.slack.com/services/" + "T0123ABCD/B0456EFGH/" + "abcdefghijklmnopqrstuvwx", []string{"slack-token"}},
		{"stripe live key", "Bearer sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", []string{"stripe-key"}},
		{"stripe publishable key is not secret", "pk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", nil},
		{"openai key", `{"api":"` + openAIKey + `"}`, []string{"openai-api-key"}},
		{"sk- without the OpenAI marker", "sk-" + strings.Repeat("abcd1234", 6), nil},
		{"anthropic key", "x-api-key: " + anthKey, []string{"anthropic-api-key"}},
		{"PEM private key", "key: |\n" + pemKey + "\n", []string{"private-key"}},
		{"PEM private key, JSON-escaped", `{"private_key":"` + strings.ReplaceAll(pemKey, "\n", `\n`) + `"}`, []string{"private-key"}},
		{"PEM public key is not secret", "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----", nil},
		{"PEM certificate is not secret", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", nil},
		{"JWT", "Authorization: Bearer " + jwtToken, []string{"jwt"}},
		{"three dotted base64 parts without alg", "eyJ0eXAiOiJ4In0" + ".eyJzdWIiOiIxMjM0In0." + strings.Repeat("Ab", 10), nil},
		{"generic api_key assignment", "api_key=Zx9Qm2Lp8Rt4Vn6Wb1Ks&q=1", []string{"generic-secret"}},
		{"generic secret in JSON", `{"client_secret": "Zx9Qm2Lp8Rt4Vn6Wb1Ks"}`, []string{"generic-secret"}},
		{"generic: low entropy", "api_key=aaaaaaaaaaaaaaaaaaaa1", nil},
		{"generic: a word, no digit", "password=correcthorsebatterystaple", nil},
		{"generic: page_token is not a secret name", `"page_token":"Zx9Qm2Lp8Rt4Vn6Wb1Ks"`, nil},
		{"a placeholder is not a secret", "api_key=sluice:cred:openai", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := findAll(tc.in)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("found %v, want %v in %q", got, tc.want, tc.in)
			}
		})
	}
}

// TestDetectorsNoFalsePositives: ordinary JSON API traffic (testdata/
// content) holds no secret.
func TestDetectorsNoFalsePositives(t *testing.T) {
	files, err := filepath.Glob("testdata/content/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := findAll(string(b)); got != nil {
			t.Errorf("%s: found %v in ordinary traffic", f, got)
		}
	}
}

// TestDetectorTable: names are unique and documented, and every
// detector is in policy/README.md.
func TestDetectorTable(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, d := range detectors {
		switch {
		case seen[d.name]:
			t.Errorf("detector %s twice", d.name)
		case d.doc == "" || (d.re == nil) == (d.find == nil):
			t.Errorf("detector %s: needs a doc and exactly one of re and find", d.name)
		case !strings.Contains(string(readme), "`"+d.name+"`"):
			t.Errorf("detector %s is not in policy/README.md", d.name)
		}
		seen[d.name] = true
	}
}

// TestDetectorClassesAndStarts: what a pause in a stream may release
// rests on each detector's class and starts, so they are checked against
// every example TestDetectors finds: each match (from its start to the
// end of the secret) is a run of the class beginning with a start.
func TestDetectorClassesAndStarts(t *testing.T) {
	examples := []string{
		`{"AccessKeyId":"` + awsKeyID + `"}`, "aws_secret_access_key = " + awsSecret + "\n", `"Aws_Secret_Key": "` + awsSecret + `"`,
		`{"type":"service_account","private_key_id":"` + strings.Repeat("3f9a", 10) + `"}`,
		"DefaultEndpointsProtocol=https;AccountName=acct01;AccountKey=" + azureKey + ";EndpointSuffix=core.windows.net",
		"Authorization: token " + githubToken, "github_pat_" + strings.Repeat("A1b2", 5) + "Zz_" + strings.Repeat("c3D4", 14) + "xyz",
		`{"private_token":"glpat-` + "xR4nd0mT0kenV4lue12ab" + `"}`, "Authorization: Bearer xoxb-" + "1234567890-1234567890123-" + "AbCdEfGhIjKlMnOpQrStUvWx",
		"https://hooks.slack.com/services/" + "T0123ABCD/B0456EFGH/" + "abcdefghijklmnopqrstuvwx", "Bearer sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
		`{"api":"` + openAIKey + `"}`, "x-api-key: " + anthKey, "key: |\n" + pemKey + "\n", `{"private_key":"` + strings.ReplaceAll(pemKey, "\n", `\n`) + `"}`,
		"Authorization: Bearer " + jwtToken, "api_key=Zx9Qm2Lp8Rt4Vn6Wb1Ks&q=1", `{"client_secret": "Zx9Qm2Lp8Rt4Vn6Wb1Ks"}`, "PASSWORD : 'Zx9Qm2Lp8Rt4Vn6Wb1Ks'",
	}
	for _, ex := range examples {
		b := []byte(ex)
		hits := anchors.find(b, 0, nil)
		any := false
		for _, d := range detectors {
			for _, sp := range d.spans(b, hits) {
				any = true
				// The match begins at the last start before the secret.
				begin := -1
				for p := sp[0]; p >= 0 && begin < 0; p-- {
					for _, st := range d.starts {
						if p+len(st) <= len(b) && (string(b[p:p+len(st)]) == st || d.foldStarts && strings.EqualFold(string(b[p:p+len(st)]), st)) {
							begin = p
						}
					}
				}
				if begin < 0 {
					t.Errorf("%s in %q: no start before the secret", d.name, ex)
					continue
				}
				keyed := false
				d.eachHit(hits, func(h, _, _ int) { keyed = keyed || h >= begin && h <= begin+d.before })
				if d.keyed && !keyed {
					t.Errorf("%s in %q: keyed, but no keyword %d bytes from the match's start", d.name, ex, d.before)
				}
				for i := begin; i < sp[1]; i++ {
					// A PEM block's class covers its header line.
					if d.name == "private-key" && i >= begin+len("-----BEGIN RSA PRIVATE KEY-----") {
						break
					}
					if !d.class.has(b[i]) {
						t.Errorf("%s in %q: byte %q of the match is not in its class", d.name, ex, b[i])
						break
					}
				}
			}
		}
		if !any {
			t.Errorf("nothing found in %q", ex)
		}
	}
}
