// Package resolver gives PUs their policy: a Resolver holds the compiled
// policy in force, resolves a PU runtime to its rules, and pushes a new
// compiled policy whenever its source changes. The daemon swaps the
// *policy.Engine atomically and re-resolves its PUs on every update.
package resolver

import (
	"sync/atomic"

	"github.com/trireme-go/trireme/monitor"
	"github.com/trireme-go/trireme/policy"
)

// Resolver is a source of policy.
type Resolver interface {
	// Current is the policy in force; never nil once the resolver exists.
	Current() *policy.Engine
	// Resolve returns the PU's rules under the policy in force, and that
	// policy, so the caller knows which version the rules belong to.
	Resolve(pu *monitor.PU) (*policy.Engine, *policy.PUPolicy)
	// Updates delivers each new policy once it is in force (not the one
	// in force when the resolver was made: read it with Current). The channel
	// holds only the newest one: a slow reader skips intermediate versions,
	// never sees an old one after a newer one.
	Updates() <-chan *policy.Engine
}

// Static is a Resolver over a fixed policy; Set replaces it (and pushes
// the update), e.g. for policy received through an API.
type Static struct {
	cur     atomic.Pointer[policy.Engine]
	updates latest
}

// NewStatic returns a resolver holding e.
func NewStatic(e *policy.Engine) *Static {
	s := &Static{updates: newLatest()}
	s.cur.Store(e)
	return s
}

func (s *Static) Current() *policy.Engine { return s.cur.Load() }

func (s *Static) Resolve(pu *monitor.PU) (*policy.Engine, *policy.PUPolicy) {
	return resolve(s.cur.Load(), pu)
}

func (s *Static) Updates() <-chan *policy.Engine { return s.updates.ch }

// Set puts e in force and pushes it.
func (s *Static) Set(e *policy.Engine) {
	s.cur.Store(e)
	s.updates.push(e)
}

func resolve(e *policy.Engine, pu *monitor.PU) (*policy.Engine, *policy.PUPolicy) {
	return e, e.ForPU(pu.Tags)
}

// latest is a one-slot channel that keeps only the newest value. It has one
// producer (the resolver), so drain-then-send cannot lose the newest value.
type latest struct{ ch chan *policy.Engine }

func newLatest() latest { return latest{ch: make(chan *policy.Engine, 1)} }

func (l latest) push(e *policy.Engine) {
	for {
		select {
		case l.ch <- e:
			return
		default:
		}
		select {
		case <-l.ch: // drop the stale value the reader has not taken
		default:
		}
	}
}
