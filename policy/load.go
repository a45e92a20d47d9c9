package policy

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// DefaultYAML is the embedded default policy: it audits everything (records
// would_deny, blocks nothing) except cloud metadata addresses, which are
// always denied. `sluice run` and an agent without policyFile use it.
//
//go:embed default.yaml
var DefaultYAML []byte

// Problem is one mistake in a policy file. Error renders it as
// "FILE:LINE: PATH VALUE: MSG", e.g.
//
//	policy.yaml:12: rules[3].destinations.hosts[1] "*foo.com": a wildcard must be a whole label, use "*.foo.com"
type Problem struct {
	File string
	Line int // 0 when unknown
	// Path is the key path, e.g. rules[3].destinations.hosts[1]; empty for
	// problems with the whole file.
	Path string
	// Value is the offending value as written, quoted; may be empty.
	Value string
	Msg   string
}

func (p *Problem) Error() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		b.WriteByte(':')
	}
	if p.Line > 0 {
		b.WriteString(strconv.Itoa(p.Line))
		b.WriteByte(':')
	}
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		if p.Value != "" {
			b.WriteByte(' ')
			b.WriteString(p.Value)
		}
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems returns every *Problem in err (as returned by Parse, Load or
// Decode), in file order.
func Problems(err error) []*Problem {
	var out []*Problem
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if p, ok := e.(*Problem); ok {
			out = append(out, p)
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}

// Load reads and compiles the policy file at path with default Options.
func Load(path string) (*Engine, error) { return LoadWith(path, Options{}) }

// LoadWith reads and compiles the policy file at path. An empty path
// compiles the embedded default policy.
func LoadWith(path string, o Options) (*Engine, error) {
	if path == "" {
		return ParseWith(DefaultYAML, "default.yaml", o)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return ParseWith(b, path, o)
}

// Parse decodes, validates and compiles a policy; filename is used in
// error messages only. Every problem is reported at once (errors.Join of
// *Problem, each with its line).
func Parse(data []byte, filename string) (*Engine, error) {
	return ParseWith(data, filename, Options{})
}

// ParseWith is Parse with Options (shared rate-limit state, logger).
func ParseWith(data []byte, filename string, o Options) (*Engine, error) {
	p, err := Decode(data, filename)
	if err != nil {
		return nil, err
	}
	return New(p, o)
}

// Default compiles the embedded default policy.
func Default(o Options) (*Engine, error) {
	return ParseWith(DefaultYAML, "default.yaml", o)
}

// Decode decodes and validates a policy file without compiling it. The
// returned error joins every *Problem found.
func Decode(data []byte, filename string) (*Policy, error) {
	d := &decoder{file: filename, lines: map[string]int{}}
	return d.result(data)
}

// result decodes and validates data, joining every problem found.
func (d *decoder) result(data []byte) (*Policy, error) {
	p, ok := d.decode(data)
	if ok {
		d.validate(p)
	}
	if len(d.probs) > 0 {
		sort.SliceStable(d.probs, func(i, j int) bool { return d.probs[i].Line < d.probs[j].Line })
		errs := make([]error, len(d.probs))
		for i, pr := range d.probs {
			errs[i] = pr
		}
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// Check decodes and validates a policy file like Decode and also returns
// its warnings: what is valid but does not do what it seems to (a
// selector nothing fills yet, a workload told apart by the process name it
// sets itself). Warnings render like problems, their Msg
// starting with "warning: ".
func Check(data []byte, filename string) (warnings []*Problem, err error) {
	d := &decoder{file: filename, lines: map[string]int{}}
	if _, err := d.result(data); err != nil {
		return nil, err
	}
	return d.warns, nil
}

// decoder collects problems and remembers the line of every key path.
type decoder struct {
	file  string
	lines map[string]int
	probs []*Problem
	// warns are valid but suspicious settings (see Check).
	warns []*Problem
	// shapeErr is set when a value had the wrong kind; validation of a
	// model decoded around unknown keys is still meaningful, around wrong
	// kinds it is not.
	shapeErr bool
	// budget bounds the nodes walked, so aliases cannot expand a small
	// file into a huge one.
	budget int
}

// add records a problem at path; value (may be empty) is quoted.
func (d *decoder) add(path, value, format string, args ...any) {
	pr := &Problem{File: d.file, Path: path, Msg: fmt.Sprintf(format, args...), Line: d.line(path)}
	if value != "" {
		pr.Value = strconv.Quote(value)
	}
	d.probs = append(d.probs, pr)
}

// warn records a warning at path.
func (d *decoder) warn(path, msg string) {
	d.warns = append(d.warns, &Problem{File: d.file, Path: path, Msg: "warning: " + msg, Line: d.line(path)})
}

// addv is add with a non-string value rendered as is.
func (d *decoder) addv(path string, value any, format string, args ...any) {
	pr := &Problem{File: d.file, Path: path, Msg: fmt.Sprintf(format, args...), Line: d.line(path), Value: fmt.Sprint(value)}
	d.probs = append(d.probs, pr)
}

// line is the line of path, or of its nearest ancestor that has one.
func (d *decoder) line(path string) int {
	for path != "" {
		if l, ok := d.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return d.lines[""]
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

func (d *decoder) decode(data []byte) (*Policy, bool) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		d.yamlErr(err)
		return nil, false
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		d.probs = append(d.probs, &Problem{File: d.file, Msg: "empty policy file: start it with \"version: 1\""})
		return nil, false
	}
	root := doc.Content[0]
	d.budget = 4*len(data) + 1000
	d.walk(root, reflect.TypeFor[Policy](), "")
	if d.shapeErr {
		return nil, false
	}
	// The walk above checked keys and kinds with paths; the strict decoder
	// is the safety net for anything it did not anticipate. With unknown
	// keys already reported, decode around them so that validation can
	// report the other problems too.
	var p Policy
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(len(d.probs) == 0)
	if err := dec.Decode(&p); err != nil {
		d.yamlErr(err)
		return nil, false
	}
	if len(d.probs) > 0 {
		return &p, true // validate it, but it is not returned
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		d.probs = append(d.probs, &Problem{File: d.file, Line: extra.Line, Msg: "a second YAML document: a policy file holds one document, remove the \"---\""})
		return nil, false
	}
	return &p, true
}

func (d *decoder) yamlErr(err error) {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	for _, m := range msgs {
		pr := &Problem{File: d.file, Msg: strings.TrimPrefix(m, "yaml: ")}
		if g := yamlLine.FindStringSubmatch(m); g != nil {
			pr.Line, _ = strconv.Atoi(g[1])
			pr.Msg = g[2]
		}
		d.probs = append(d.probs, pr)
	}
}

// walk checks that n has the shape of t (mapping for structs and maps,
// sequence for slices, scalar otherwise), that every key is known, and
// records the line of each path.
func (d *decoder) walk(n *yaml.Node, t reflect.Type, path string) {
	if d.budget--; d.budget < 0 {
		if d.budget == -1 {
			d.shapeErr = true
			d.add(path, "", "the document expands to too many values (anchors and aliases?): write it out plainly")
		}
		return
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	d.lines[path] = n.Line
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // absent value: the zero value
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	where := path
	if where == "" {
		where = "the top level"
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.shapeErr = true
			d.add(path, "", "must be a mapping of keys (%s), not a %s", strings.Join(yamlKeys(t), ", "), kindName(n))
			return
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			child := joinPath(path, k.Value)
			d.lines[child] = k.Line
			if seen[k.Value] {
				d.shapeErr = true
				d.add(child, "", "duplicate key, keep one")
				continue
			}
			seen[k.Value] = true
			f, ok := fieldByKey(t, k.Value)
			if !ok {
				hint := ""
				if s := closest(k.Value, yamlKeys(t)); s != "" {
					hint = fmt.Sprintf("did you mean %q? ", s)
				}
				d.probs = append(d.probs, &Problem{File: d.file, Line: k.Line, Path: child,
					Msg: fmt.Sprintf("unknown key in %s: %sknown keys are %s", where, hint, strings.Join(yamlKeys(t), ", "))})
				continue
			}
			d.walk(v, f.Type, child)
			d.lines[child] = k.Line
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.shapeErr = true
			d.add(path, "", "must be a mapping like {key: value}, not a %s", kindName(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			child := joinPath(path, k.Value)
			d.walk(v, t.Elem(), child)
			d.lines[child] = k.Line
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.shapeErr = true
			d.add(path, n.Value, "must be a list, e.g. [%s]", exampleItem(n))
			return
		}
		for i, c := range n.Content {
			d.walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	default:
		if n.Kind != yaml.ScalarNode {
			d.shapeErr = true
			d.add(path, "", "must be a single value, not a %s", kindName(n))
			return
		}
		switch t.Kind() {
		case reflect.Int, reflect.Int64:
			var v int64
			if err := n.Decode(&v); err != nil {
				d.shapeErr = true
				d.add(path, n.Value, "must be a whole number")
			}
		case reflect.Bool:
			var v bool
			if err := n.Decode(&v); err != nil {
				d.shapeErr = true
				d.add(path, n.Value, "must be true or false")
			}
		}
	}
}

func exampleItem(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode && n.Value != "" {
		return strconv.Quote(n.Value)
	}
	return "..."
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	default:
		return "single value"
	}
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func yamlKey(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

func yamlKeys(t reflect.Type) []string {
	var ks []string
	for i := range t.NumField() {
		if k := yamlKey(t.Field(i)); k != "" && k != "-" {
			ks = append(ks, k)
		}
	}
	return ks
}

func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		if f := t.Field(i); yamlKey(f) == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// closest returns the known key nearest to k (case-insensitive equality or
// edit distance at most 2), or "".
func closest(k string, known []string) string {
	best, bestD := "", 3
	for _, c := range known {
		if strings.EqualFold(c, k) {
			return c
		}
		if dd := editDistance(strings.ToLower(k), strings.ToLower(c)); dd < bestD {
			best, bestD = c, dd
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
