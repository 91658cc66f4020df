package policy

import (
	"net/netip"

	"github.com/trireme-go/trireme/reason"
)

// Direction says which list of a policy a rule is in.
type Direction uint8

const (
	Ingress Direction = iota // who may connect to the selected PUs
	Egress                   // what the selected PUs may connect to
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// RuleRef names one rule of a compiled policy; it is immutable and part of
// the Engine, so a Decision can point at it without allocating.
type RuleRef struct {
	Policy    string
	Direction Direction
	Index     int
	Name      string
	Action    Action
	Observe   ObserveMode
	Log       bool
	Pos       Position
}

// Decision is the verdict of one half (ingress or egress) of a connection.
type Decision struct {
	Action   Action      // Allow, Reject, or Deny (nothing matched)
	Rule     *RuleRef    // the rule that decided (nil when nothing matched)
	Observed *RuleRef    // an observed rule that matched, if any
	Reason   reason.Code // None (allow), PolicyRejected, PolicyDenied
	Log      bool        // the deciding or the observed rule has log: true
}

// Allowed reports whether the decision lets the connection through.
func (d Decision) Allowed() bool { return d.Action == Allow }

func (e *Engine) Set() *Set { return e.set }

// IsTarget reports whether a lies inside the target networks.
func (e *Engine) IsTarget(a netip.Addr) bool { return e.target.contains(a.Unmap()) }

// IsExcluded reports whether a lies inside the excluded networks.
func (e *Engine) IsExcluded(a netip.Addr) bool { return e.excluded.contains(a.Unmap()) }
