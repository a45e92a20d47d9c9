package policy

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"reflect"
	"slices"
	"testing"
)

var update = flag.Bool("update", false, "rewrite schema.json from the Go model")

// TestSchemaInSync fails when schema.json differs from what the model
// generates: run `go test ./policy -run TestSchema -update` after changing
// model.go.
func TestSchemaInSync(t *testing.T) {
	want := GenerateSchema()
	if *update {
		if err := os.WriteFile("schema.json", want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("schema.json is stale: run go test ./policy -run TestSchema -update")
	}
}

// TestSchemaCoversModel walks the model and the schema side by side: every
// YAML key of the model is a schema property and vice versa.
func TestSchemaCoversModel(t *testing.T) {
	var s map[string]any
	if err := json.Unmarshal(SchemaJSON, &s); err != nil {
		t.Fatalf("schema.json is not JSON: %v", err)
	}
	var walk func(t *testing.T, ty reflect.Type, s map[string]any, at string)
	walk = func(t *testing.T, ty reflect.Type, s map[string]any, at string) {
		for ty.Kind() == reflect.Pointer {
			ty = ty.Elem()
		}
		switch ty.Kind() {
		case reflect.Struct:
			props, _ := s["properties"].(map[string]any)
			if s["additionalProperties"] != false {
				t.Errorf("%s: schema allows unknown keys, the decoder does not", at)
			}
			keys := yamlKeys(ty)
			for _, k := range keys {
				p, ok := props[k].(map[string]any)
				if !ok {
					t.Errorf("%s.%s: in the model, missing from the schema", at, k)
					continue
				}
				if p["description"] == nil {
					t.Errorf("%s.%s: no description", at, k)
				}
				f, _ := fieldByKey(ty, k)
				walk(t, f.Type, p, at+"."+k)
			}
			for k := range props {
				if !slices.Contains(keys, k) {
					t.Errorf("%s.%s: in the schema, not in the model", at, k)
				}
			}
		case reflect.Slice:
			items, _ := s["items"].(map[string]any)
			if s["type"] != "array" || items == nil {
				t.Errorf("%s: want an array schema", at)
				return
			}
			walk(t, ty.Elem(), items, at+"[]")
		}
	}
	walk(t, reflect.TypeFor[Policy](), s, "policy")
}

// TestSchemaAcceptsDefault checks that every key of the default policy
// and of the example policy exists in the schema (a tiny validator for the
// subset of JSON Schema the generator emits).
func TestSchemaAcceptsExamples(t *testing.T) {
	var s map[string]any
	if err := json.Unmarshal(SchemaJSON, &s); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"default.yaml", "testdata/example.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if err := yamlUnmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		for _, e := range validateSchema(s, doc, f) {
			t.Error(e)
		}
	}
}

func validateSchema(s map[string]any, v any, at string) []string {
	var errs []string
	switch s["type"] {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return []string{at + ": want an object"}
		}
		props, _ := s["properties"].(map[string]any)
		for k, x := range m {
			if p, ok := props[k].(map[string]any); ok {
				errs = append(errs, validateSchema(p, x, at+"."+k)...)
			} else if ap, ok := s["additionalProperties"].(map[string]any); ok {
				errs = append(errs, validateSchema(ap, x, at+"."+k)...)
			} else {
				errs = append(errs, at+"."+k+": not in the schema")
			}
		}
	case "array":
		l, ok := v.([]any)
		if !ok {
			return []string{at + ": want an array"}
		}
		for _, x := range l {
			errs = append(errs, validateSchema(s["items"].(map[string]any), x, at+"[]")...)
		}
	case "integer":
		if _, ok := v.(int); !ok {
			errs = append(errs, at+": want an integer")
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			errs = append(errs, at+": want a boolean")
		}
	case "string":
		if _, ok := v.(string); !ok {
			errs = append(errs, at+": want a string")
		}
	}
	if e, ok := s["enum"].([]any); ok && !slices.Contains(e, v) {
		errs = append(errs, at+": not one of the enum")
	}
	return errs
}
