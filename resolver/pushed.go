package resolver

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/policy"
)

// Pushed is a policy in force that an integration computes and pushes
// (Put), as the Kubernetes agent does from the NetworkPolicies it watches.
// It starts with an initial set (the node's policy until the integration
// has synced) and puts each new set in force once compiled; a set that
// does not compile is rejected and the previous one stays in force.
type Pushed struct {
	name string // for Status.File and the logs
	log  *slog.Logger
	// added to each set's networks, as FileOptions
	targets, excluded []netip.Prefix

	cur     atomic.Pointer[policy.Engine]
	updates latest

	mu     sync.Mutex
	status Status
}

// NewPushed compiles the initial set and returns a resolver holding it.
// name says where the policy comes from (e.g. "kubernetes").
func NewPushed(name string, initial *policy.Set, opts FileOptions) (*Pushed, error) {
	p := &Pushed{name: name, log: opts.Logger, updates: newLatest(), targets: opts.TargetNetworks, excluded: opts.ExcludedNetworks}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.status.File = name
	e, err := p.compile(initial)
	if err != nil {
		return nil, err
	}
	p.cur.Store(e)
	p.status.LoadedAt, p.status.Policies, p.status.Reloads = time.Now(), len(initial.Policies), 1
	return p, nil
}

func (p *Pushed) compile(set *policy.Set) (*policy.Engine, error) {
	s := *set // the caller's set is not changed
	s.TargetNetworks = append(append([]netip.Prefix(nil), set.TargetNetworks...), p.targets...)
	s.ExcludedNetworks = append(append([]netip.Prefix(nil), set.ExcludedNetworks...), p.excluded...)
	return policy.Compile(&s)
}

// Put compiles set and puts it in force (Updates). On error the previous
// policy stays in force and the error is recorded.
func (p *Pushed) Put(set *policy.Set) error {
	e, err := p.compile(set)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.status.LastError, p.status.ErrorAt = err.Error(), time.Now()
		p.status.Rejected++
		p.log.Error("policy rejected; previous policy stays in force", "source", p.name, "error", err)
		return err
	}
	p.cur.Store(e)
	p.updates.push(e)
	p.status.LoadedAt, p.status.Policies = time.Now(), len(set.Policies)
	p.status.Reloads++
	p.status.LastError, p.status.ErrorAt = "", time.Time{}
	return nil
}

// Current is the policy in force.
func (p *Pushed) Current() *policy.Engine { return p.cur.Load() }

// Updates delivers each new policy put in force (only the newest one
// waits when the reader is behind).
func (p *Pushed) Updates() <-chan *policy.Engine { return p.updates.ch }

// Status returns a snapshot of the resolver's state.
func (p *Pushed) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

// Run does nothing but wait: the integration pushes.
func (p *Pushed) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}
