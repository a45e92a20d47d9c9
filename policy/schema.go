package policy

import (
	_ "embed"
	"encoding/json"
	"reflect"
	"strings"
)

// SchemaJSON is the JSON Schema of the policy file for editors (e.g. the
// YAML language server: `# yaml-language-server: $schema=schema.json`). It
// is generated from the Go model by GenerateSchema; a test keeps the
// committed file equal to it (go test ./policy -run TestSchema -update).
//
//go:embed schema.json
var SchemaJSON []byte

// GenerateSchema builds the JSON Schema (draft 2020-12) of Policy from the
// model's tags: yaml (key), desc (description), enum (allowed values,
// separated by |) and required.
func GenerateSchema() []byte {
	s := schemaOf(reflect.TypeFor[Policy]())
	s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	s["$id"] = "https://sluicehq.github.io/sluice/policy.schema.json"
	s["title"] = "Sluice policy"
	b, _ := json.MarshalIndent(s, "", "  ")
	return append(b, '\n')
}

func schemaOf(t reflect.Type) map[string]any {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		props := map[string]any{}
		var req []string
		for i := range t.NumField() {
			f := t.Field(i)
			k := yamlKey(f)
			if k == "" || k == "-" {
				continue
			}
			p := schemaOf(f.Type)
			if d := f.Tag.Get("desc"); d != "" {
				p["description"] = d
			}
			if e := f.Tag.Get("enum"); e != "" {
				p["enum"] = strings.Split(e, "|")
			}
			if f.Tag.Get("required") == "true" {
				req = append(req, k)
			}
			props[k] = p
		}
		s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		if len(req) > 0 {
			s["required"] = req
		}
		return s
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t.Elem())}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": schemaOf(t.Elem())}
	case reflect.Int, reflect.Int64:
		return map[string]any{"type": "integer"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	default:
		return map[string]any{"type": "string"}
	}
}
