package config

import (
	"fmt"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/sluicehq/sluice/policy"
)

// Size is a byte count written as a string in YAML ("100MB", "1GiB").
type Size int64

// UnmarshalYAML implements yaml.Unmarshaler.
func (z *Size) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: a size is a string like \"100MB\"", n.Line)
	}
	v, err := policy.ParseSize(s)
	if err != nil {
		return fmt.Errorf("line %d: size %q: %w", n.Line, s, err)
	}
	*z = Size(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (z Size) MarshalYAML() (any, error) { return strconv.FormatInt(int64(z), 10) + "B", nil }

// SizeOrOff is a Size that may also be "off" (0), for a setting whose
// absence is not the same as turning it off.
type SizeOrOff Size

// UnmarshalYAML implements yaml.Unmarshaler.
func (z *SizeOrOff) UnmarshalYAML(n *yaml.Node) error {
	if n.Value == "off" {
		*z = 0
		return nil
	}
	return (*Size)(z).UnmarshalYAML(n)
}

// MarshalYAML implements yaml.Marshaler.
func (z SizeOrOff) MarshalYAML() (any, error) {
	if z == 0 {
		return "off", nil
	}
	return Size(z).MarshalYAML()
}
