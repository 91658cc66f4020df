package node

import (
	"encoding"
	"fmt"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/trireme-go/trireme/dataplane"
)

// The daemon's modes are typed enums that read and write their names (like
// reason.Code): the config file, the API and the code share one spelling.

// MidStream is the config's midStream setting, dataplane.MidStream read
// from YAML with the line of a bad value.
type MidStream struct{ dataplane.MidStream }

// UnmarshalYAML reads drop, reset or acl.
func (m *MidStream) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalSetting(n, "midStream", &m.MidStream)
}

// PolicyChange says what happens to established flows when the policy
// changes.
type PolicyChange uint8

const (
	// PolicyChangeKeep keeps them (the default).
	PolicyChangeKeep PolicyChange = iota
	// PolicyChangeReset resets those the new policy denies.
	PolicyChangeReset
)

var policyChangeNames = [...]string{PolicyChangeKeep: "keep", PolicyChangeReset: "reset"}

func (p PolicyChange) String() string { return enumName(policyChangeNames[:], int(p)) }

// MarshalText writes the setting's name.
func (p PolicyChange) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads keep or reset.
func (p *PolicyChange) UnmarshalText(b []byte) error {
	i, err := enumValue(policyChangeNames[:], b, "policy change")
	if err == nil {
		*p = PolicyChange(i)
	}
	return err
}

// UnmarshalYAML reads keep or reset, naming the line of a bad value.
func (p *PolicyChange) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalSetting(n, "onPolicyChange", p)
}

// PUState is where a PU is in its life, as the API shows it.
type PUState uint8

const (
	// PUStarting: being set up (namespace, veth, steering, TAPs).
	PUStarting PUState = iota
	// PURunning: policed.
	PURunning
	// PURestoring: known from the state directory after a restart, not yet
	// set up again.
	PURestoring
	// PUPaused: its container is paused; it keeps its namespace, flows and
	// policy.
	PUPaused
)

var puStateNames = [...]string{PUStarting: "starting", PURunning: "running", PURestoring: "restoring", PUPaused: "paused"}

func (s PUState) String() string { return enumName(puStateNames[:], int(s)) }

// MarshalText writes the state's name.
func (s PUState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a state's name.
func (s *PUState) UnmarshalText(b []byte) error {
	i, err := enumValue(puStateNames[:], b, "PU state")
	if err == nil {
		*s = PUState(i)
	}
	return err
}

func enumName(names []string, i int) string {
	if i < len(names) {
		return names[i]
	}
	return strconv.Itoa(i)
}

func enumValue(names []string, b []byte, what string) (int, error) {
	for i, name := range names {
		if string(b) == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%s %q: want one of %v", what, b, names)
}

// unmarshalSetting reads a YAML scalar into v. A bad value is a type error
// naming the field and line, so that decoding goes on and the config's other
// problems are reported with it (ParseConfig).
func unmarshalSetting(n *yaml.Node, field string, v encoding.TextUnmarshaler) error {
	err := fmt.Errorf("want a word")
	if n.Kind == yaml.ScalarNode {
		if err = v.UnmarshalText([]byte(n.Value)); err == nil {
			return nil
		}
	}
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("%s: line %d: column %d: %v", field, n.Line, n.Column, err)}}
}
