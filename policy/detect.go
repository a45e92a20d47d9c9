package policy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"hash/crc32"
	"math"
	"regexp"
	"slices"
	"strings"
)

// This file holds the built-in secret detectors: one entry per kind of
// secret, each with its pattern, the keywords that must appear for the
// pattern to be tried at all (a fast prefilter), and a validator where the
// format has one (a checksum, a decodable structure, a minimum entropy).
// The table is immutable: its compiled expressions are shared by every
// policy.

// detector is one built-in detector.
type detector struct {
	name string
	// id is 1+ the detector's index in detectors (set by the
	// prefilter, anchors); 0 for a rule's own pattern.
	id int
	// kw0 is the index of its first keyword in anchors.kws.
	kw0 int
	// doc describes what it finds, for policy/README.md and tests.
	doc string
	// keywords: at least one must occur in the text for re to be tried
	// (at least 3 bytes each; found by the prefilter, anchors).
	keywords [][]byte
	re       *regexp.Regexp
	// group is the submatch that is the secret (and is redacted); 0 for
	// the whole match.
	group int
	// valid, when set, must accept the secret for the match to count.
	valid func(secret []byte) bool
	// back and fwd are how far before and after a keyword the secret
	// may reach (default 32 and 320 bytes); the expression runs only
	// that close to keywords.
	back, fwd int
	// find replaces re for formats a regular expression can't bound
	// (PEM blocks) or that is faster written out: it returns the spans
	// of secrets in b, given d's keyword hits in b (at least one).
	find func(d *detector, b []byte, hits []hit) [][2]int
	// open, for a find detector whose secrets may end far from its
	// keyword, is the span a secret around the hit h may cover in a
	// stream's window b: start and end (past len(b) while the secret may
	// still grow), or an end of -1 for none.
	open func(d *detector, b []byte, h hit) (start, end int)
	// class holds every character a secret's match may have, and starts
	// the beginnings of a match (any case when foldStarts): what a
	// stream's pause may not release (BodyScan.Flush). A test checks
	// them against the detector's examples.
	class      *charClass
	starts     []string
	foldStarts bool
	// keyed: every match holds one of the keywords, at most before
	// bytes after the match's start (so a pause holds a stream from
	// there, not from the keyword's region).
	keyed  bool
	before int
}

// charClass is a set of bytes.
type charClass [4]uint64

func (c *charClass) has(b byte) bool { return c[b>>6]&(1<<(b&63)) != 0 }

// chars makes a charClass of spec: bytes and ranges like A-Z; a "-"
// not between two bytes in order is itself.
func chars(spec string) *charClass {
	c := new(charClass)
	for i := 0; i < len(spec); i++ {
		lo, hi := spec[i], spec[i]
		if i+2 < len(spec) && spec[i+1] == '-' && spec[i] < spec[i+2] {
			hi = spec[i+2]
			i += 2
		}
		for x := int(lo); x <= int(hi); x++ {
			c[x>>6] |= 1 << (x & 63)
		}
	}
	return c
}

// notChars is the charClass of every byte but those of spec.
func notChars(spec string) *charClass {
	c := chars(spec)
	for i := range c {
		c[i] = ^c[i]
	}
	return c
}

const spaces = " \t\r\n\f\v"

// maxMatch is the longest secret a detector or pattern finds in a body
// (a PEM block of an RSA 4096 key is about 3.3KB; escaped in JSON a bit
// more). The body scanner keeps this much of the stream between reads, so
// a secret straddling two reads is found.
const maxMatch = 8 << 10

func kw(s ...string) [][]byte {
	out := make([][]byte, len(s))
	for i, v := range s {
		out[i] = []byte(v)
	}
	return out
}

// detectors is the table of built-in detectors, in the order they are
// tried. Names are stable: they appear in policies, records and answers.
var detectors = []*detector{
	{
		name:     "aws-access-key-id",
		doc:      "AWS access key id: AKIA, ASIA, ABIA or ACCA and 16 base-32 characters",
		keywords: kw("AKIA", "ASIA", "ABIA", "ACCA"),
		re:       regexp.MustCompile(`\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b`),
		class:    chars("A-Z0-9"),
		starts:   []string{"AKIA", "ASIA", "ABIA", "ACCA"},
		keyed:    true,
	},
	{
		name:     "aws-secret-access-key",
		doc:      "AWS secret access key: 40 base-64 characters assigned to a name like aws_secret_access_key (entropy at least 4 bits per character)",
		keywords: kw("ws_secret", "WS_SECRET", "wsSecret", "WsSecret", "wssecret", "WSSECRET", "ws_Secret"),
		re:       regexp.MustCompile(`(?i)aws_?secret_?(?:access_?)?key["']?\s*[:=]\s*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)`),
		group:    1,
		valid:    minEntropy(4),
		class:    chars("A-Za-z0-9_/+\"':=" + spaces), starts: []string{"aws"}, foldStarts: true,
	},
	{
		name:     "gcp-service-account-key",
		doc:      `GCP service-account key JSON: its "private_key_id" (40 hex digits); the private key itself is found by private-key`,
		keywords: kw("private_key_id"),
		re:       regexp.MustCompile(`"private_key_id"\s*:\s*"([0-9a-f]{40})"`),
		group:    1,
		class:    chars("a-z0-9_\":" + spaces),
		starts:   []string{`"private_key_id"`},
		keyed:    true, before: 1,
	},
	{
		name:     "azure-storage-connection-string",
		doc:      "Azure storage connection string: the AccountKey (88 base-64 characters decoding to 64 bytes) after an AccountName",
		keywords: kw("AccountKey="),
		back:     64,
		re:       regexp.MustCompile(`AccountName=[A-Za-z0-9]{3,24};AccountKey=([A-Za-z0-9+/]{86}==)`),
		group:    1,
		valid:    decodesTo(64),
		class:    chars("A-Za-z0-9+/=;"),
		starts:   []string{"AccountName="},
		keyed:    true, before: len("AccountName=") + 24 + 1,
	},
	{
		name:     "github-token",
		doc:      "GitHub token: ghp_, gho_, ghu_, ghs_ or ghr_ and 36 characters whose last 6 are the CRC-32 of the first 30 (checked), or a fine-grained github_pat_",
		keywords: kw("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
		re:       regexp.MustCompile(`\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})\b`),
		valid:    githubChecksum,
		class:    chars("A-Za-z0-9_"),
		starts:   []string{"ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"},
		keyed:    true,
	},
	{
		name:     "gitlab-token",
		doc:      "GitLab token: glpat-, gloas-, glrt- or gldt- and 20 or more URL-safe characters",
		keywords: kw("glpat-", "gloas-", "glrt-", "gldt-"),
		re:       regexp.MustCompile(`\b(?:glpat|gloas|glrt|gldt)-[A-Za-z0-9_.\-]{20,255}`),
		class:    chars("A-Za-z0-9_.-"),
		starts:   []string{"glpat-", "gloas-", "glrt-", "gldt-"},
		keyed:    true,
	},
	{
		name:     "slack-token",
		doc:      "Slack token (xoxb-, xoxp-, xoxa-, xoxo-, xoxs-, xoxr- with numeric ids) or incoming webhook URL",
		keywords: kw("xox", "hooks.slack.com"),
		re:       regexp.MustCompile(`\bxox[abposr]-[0-9]{8,13}-[0-9A-Za-z-]{8,200}|https://hooks\.slack\.com/services/T[A-Z0-9]{8,12}/B[A-Z0-9]{8,12}/[A-Za-z0-9]{24}`),
		class:    chars("A-Za-z0-9_.:/-"),
		starts:   []string{"xox", "https://hooks.slack.com/"},
		keyed:    true, before: len("https://"),
	},
	{
		name:     "stripe-key",
		doc:      "Stripe secret or restricted key: sk_live_, sk_test_, rk_live_, rk_test_ and 24 or more characters",
		keywords: kw("sk_live_", "sk_test_", "rk_live_", "rk_test_"),
		re:       regexp.MustCompile(`\b[sr]k_(?:live|test)_[0-9A-Za-z]{24,247}\b`),
		class:    chars("A-Za-z0-9_"),
		starts:   []string{"sk_live_", "sk_test_", "rk_live_", "rk_test_"},
		keyed:    true,
	},
	{
		name:     "openai-api-key",
		doc:      "OpenAI API key: sk- (or sk-proj-, sk-svcacct-, sk-admin-) with the T3BlbkFJ marker (base-64 of \"OpenAI\")",
		keywords: kw("T3BlbkFJ"),
		back:     300,
		re:       regexp.MustCompile(`\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{16,250}T3BlbkFJ[A-Za-z0-9_-]{16,250}\b`),
		class:    chars("A-Za-z0-9_-"),
		starts:   []string{"sk-"},
		keyed:    true, before: len("sk-svcacct-") + 250,
	},
	{
		name:     "anthropic-api-key",
		doc:      "Anthropic API key: sk-ant-api03-, sk-ant-admin01- (and similar) and 80 or more characters",
		keywords: kw("sk-ant-"),
		re:       regexp.MustCompile(`\bsk-ant-(?:api|admin|oat)[0-9]{2}-[A-Za-z0-9_-]{80,250}`),
		class:    chars("A-Za-z0-9_-"),
		starts:   []string{"sk-ant-"},
		keyed:    true,
	},
	{
		name:     "private-key",
		doc:      "PEM private key block: -----BEGIN ... PRIVATE KEY----- to its END line (also with JSON-escaped newlines), at most 8KiB",
		keywords: kw("PRIVATE KEY-----"),
		back:     11 + 64, // "-----BEGIN " and the rest of the line
		fwd:      maxMatch,
		find:     findPEM,
		// Until its keyword, a block is its header line.
		class:  notChars("\r\n\\\""),
		starts: []string{"-----BEGIN "},
	},
	{
		name:     "jwt",
		doc:      `JSON Web Token: three base64url parts, the first decoding to a JSON header with "alg"`,
		keywords: kw("eyJ"),
		re:       regexp.MustCompile(`\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}`),
		valid:    jwtHeader,
		fwd:      maxMatch,
		class:    chars("A-Za-z0-9_.-"),
		starts:   []string{"eyJ"},
		keyed:    true,
	},
	{
		name: "generic-secret",
		doc: "a value of 16 to 128 token characters assigned (= or :) to api_key, apikey, secret, secret_key, client_secret, " +
			"access_token, auth_token, refresh_token, token, password, passwd or private_key as a whole word (any case), with at least one digit " +
			"and one letter and an entropy of at least 3.5 bits per character",
		keywords: genericKeywords,
		back:     8, // "refresh_" of refresh_token, "private_" of private_key
		find:     findGeneric,
		open:     openGeneric,
		class:    chars("A-Za-z0-9_\"':=+/.~-" + spaces), starts: genericNames, foldStarts: true,
	},
}

// Detectors returns the names of the built-in detectors, in table order.
func Detectors() []string {
	out := make([]string, len(detectors))
	for i, d := range detectors {
		out[i] = d.name
	}
	return out
}

// DetectorDoc returns what the named detector finds, or "" for none.
func DetectorDoc(name string) string {
	if d := detectorByName(name); d != nil {
		return d.doc
	}
	return ""
}

func detectorByName(name string) *detector {
	for _, d := range detectors {
		if d.name == name {
			return d
		}
	}
	return nil
}

// minEntropy accepts a secret whose Shannon entropy is at least bits per
// character.
func minEntropy(bits float64) func([]byte) bool {
	return func(b []byte) bool { return entropy(b) >= bits }
}

// entropy is the Shannon entropy of b in bits per byte.
func entropy(b []byte) float64 {
	if len(b) == 0 {
		return 0
	}
	var n [256]int
	for _, c := range b {
		n[c]++
	}
	h := 0.0
	for _, c := range n {
		if c > 0 {
			p := float64(c) / float64(len(b))
			h -= p * math.Log2(p)
		}
	}
	return h
}

// decodesTo accepts standard base-64 that decodes to n bytes.
func decodesTo(n int) func([]byte) bool {
	return func(b []byte) bool {
		out, err := base64.StdEncoding.DecodeString(string(b))
		return err == nil && len(out) == n
	}
}

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// githubChecksum checks a classic GitHub token (prefix_ + 30 random
// characters + 6 characters of base-62 CRC-32 of the random part); a
// fine-grained token has no published checksum and is accepted.
func githubChecksum(b []byte) bool {
	if bytes.HasPrefix(b, []byte("github_pat_")) {
		return true
	}
	if len(b) != 40 {
		return false
	}
	return string(b[34:]) == GitHubChecksum(b[4:34])
}

// GitHubChecksum is the 6-character base-62 CRC-32 GitHub appends to the
// random part of a classic token. Tests use it to build valid tokens.
func GitHubChecksum(random []byte) string {
	c := crc32.ChecksumIEEE(random)
	var out [6]byte
	for i := 5; i >= 0; i-- {
		out[i] = base62[c%62]
		c /= 62
	}
	return string(out[:])
}

// jwtHeader accepts a token whose first part is a JSON object with "alg".
func jwtHeader(b []byte) bool {
	head, _, _ := bytes.Cut(b, []byte("."))
	raw, err := base64.RawURLEncoding.DecodeString(string(head))
	if err != nil {
		return false
	}
	var h struct {
		Alg *string `json:"alg"`
	}
	return json.Unmarshal(raw, &h) == nil && h.Alg != nil
}

// genericValue accepts a value that looks random: a letter and a digit,
// at least 3.5 bits of entropy per character, and not a placeholder.
func genericValue(b []byte) bool {
	var letter, digit bool
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			digit = true
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			letter = true
		}
	}
	return letter && digit && entropy(b) >= 3.5
}

// findPEM finds PEM private key blocks, from the BEGIN line to the END
// line, with real or JSON-escaped (\n) line breaks. A block longer than
// maxMatch, or without an END line yet, is taken from BEGIN to maxMatch
// bytes on (or the end of b): the key material is the secret.
func findPEM(_ *detector, b []byte, _ []hit) [][2]int {
	var out [][2]int
	begin := []byte("-----BEGIN ")
	for off := 0; off < len(b); {
		i := bytes.Index(b[off:], begin)
		if i < 0 {
			break
		}
		start := off + i
		line := b[start+len(begin):]
		head := bytes.Index(line[:min(len(line), 64)], []byte("PRIVATE KEY-----"))
		if head < 0 || bytes.ContainsAny(line[:head], "\r\n\\\"") {
			off = start + len(begin)
			continue
		}
		rest := b[start:min(len(b), start+maxMatch)]
		end := len(rest)
		if j := bytes.Index(rest[len(begin):], []byte("-----END ")); j >= 0 {
			k := len(begin) + j + len("-----END ")
			if m := bytes.Index(rest[k:min(len(rest), k+64)], []byte("-----")); m >= 0 {
				end = k + m + len("-----")
			}
		}
		out = append(out, [2]int{start, start + end})
		off = start + end
	}
	return out
}

// genericNames are the names generic-secret looks for, lower case.
var genericNames = []string{"api_key", "apikey", "secret", "secret_key", "client_secret", "access_token", "auth_token",
	"refresh_token", "token", "password", "passwd", "private_key"}

// findGeneric finds generic-secret's assignments: a name of
// genericNames as a whole word, an optional quote, = or : between
// optional spaces, an optional quote, and a value of 16 to 128 token
// characters that genericValue accepts. It looks only where the
// prefilter found one of genericKeywords, and is written out rather than
// a case-insensitive expression, which is ten times slower.
func findGeneric(d *detector, b []byte, hits []hit) [][2]int {
	var out [][2]int
	d.eachHit(hits, func(h, _, k int) {
		for _, c := range genericStems[k] {
			name, start := c.name, h-c.at
			if start < 0 || start+len(name) > len(b) || (start > 0 && isWord(b[start-1])) ||
				!strings.EqualFold(string(b[start:start+len(name)]), name) {
				continue
			}
			if s, e, ok := assignedValue(b, start+len(name)); ok && !slices.ContainsFunc(out, func(sp [2]int) bool { return sp[0] == s }) {
				out = append(out, [2]int{s, e})
				break
			}
		}
	})
	if len(out) > 1 {
		slices.SortFunc(out, func(x, y [2]int) int { return x[0] - y[0] })
	}
	return out
}

// openGeneric is the span of a generic-secret assignment around the
// keyword hit h in a stream's window b: from its name to the end of its
// value, past len(b) when the window ends before the value does (or
// before the name, the assignment or the value is complete), none when
// no assignment is there.
func openGeneric(d *detector, b []byte, h hit) (start, end int) {
	for _, c := range genericStems[int(h.kw)-d.kw0] {
		start = int(h.pos) - c.at
		if start < 0 || (start > 0 && isWord(b[start-1])) {
			continue
		}
		if start+len(c.name) > len(b) {
			if strings.EqualFold(string(b[start:]), c.name[:len(b)-start]) {
				return start, len(b) + 1
			}
			continue
		}
		if !strings.EqualFold(string(b[start:start+len(c.name)]), c.name) {
			continue
		}
		i := start + len(c.name)
		if i < len(b) && (b[i] == '"' || b[i] == '\'') {
			i++
		}
		for i < len(b) && isSpace(b[i]) {
			i++
		}
		if i == len(b) {
			return start, len(b) + 1
		}
		if b[i] != ':' && b[i] != '=' {
			continue
		}
		for i++; i < len(b) && isSpace(b[i]); i++ {
		}
		if i < len(b) && (b[i] == '"' || b[i] == '\'') {
			i++
		}
		s := i
		for i < len(b) && i-s < 128 && isTokenChar(b[i]) {
			i++
		}
		if i == len(b) && i-s < 128 {
			return start, len(b) + 1
		}
		return start, i
	}
	return 0, -1
}

// genericStems lists, for each of genericKeywords, the names of
// genericNames that hold it (in their order) and where.
var genericStems = func() [][]struct {
	name string
	at   int
} {
	out := make([][]struct {
		name string
		at   int
	}, len(genericKeywords))
	for i, k := range genericKeywords {
		for _, n := range genericNames {
			if j := strings.Index(n, strings.ToLower(string(k))); j >= 0 {
				out[i] = append(out[i], struct {
					name string
					at   int
				}{n, j})
			}
		}
	}
	return out
}()

// genericKeywords are the spellings whose occurrences findGeneric
// checks for a name: the stems of genericNames in three cases.
var genericKeywords = kw("key", "KEY", "Key", "secret", "SECRET", "Secret", "token", "TOKEN", "Token", "passw", "PASSW", "Passw")

// assignedValue parses ["']?\s*[:=]\s*["']? and a value from b[i:].
func assignedValue(b []byte, i int) (s, e int, ok bool) {
	if i < len(b) && (b[i] == '"' || b[i] == '\'') {
		i++
	}
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	if i >= len(b) || (b[i] != ':' && b[i] != '=') {
		return 0, 0, false
	}
	i++
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	if i < len(b) && (b[i] == '"' || b[i] == '\'') {
		i++
	}
	s = i
	for i < len(b) && i-s < 128 && isTokenChar(b[i]) {
		i++
	}
	if i-s < 16 || !genericValue(b[s:i]) {
		return 0, 0, false
	}
	return s, i, true
}

func isWord(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isTokenChar(c byte) bool {
	return isWord(c) || c == '-' || c == '+' || c == '/' || c == '=' || c == '.' || c == '~'
}
