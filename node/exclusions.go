package node

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
)

// excludedSet is the kernel's set of excluded networks (the steering's):
// traffic with a peer in it is not steered, so not checked.
type excludedSet interface {
	AddExcluded(netip.Prefix) error
	RemoveExcluded(netip.Prefix) error
}

// exclusions are the node's excluded networks: those of the policy in
// force (with the config's) and those added at runtime through the control
// API (kept in the state file). The kernel's set holds their union.
type exclusions struct {
	log *slog.Logger
	// save persists the runtime exclusions (called with mu held, so
	// that the file follows the order of the changes).
	save func(runtime []netip.Prefix)

	mu      sync.Mutex
	kernel  excludedSet // nil until the steering is open (Start)
	runtime []netip.Prefix
	policy  []netip.Prefix
}

// open hands the exclusions the kernel's set; the union is then put in it
// by the caller (steer.Apply, see all).
func (x *exclusions) open(kernel excludedSet) {
	x.mu.Lock()
	x.kernel = kernel
	x.mu.Unlock()
}

// setRuntime sets the runtime exclusions read from the state (before
// open).
func (x *exclusions) setRuntime(ps []netip.Prefix) {
	x.mu.Lock()
	x.runtime = slices.Clone(ps)
	x.mu.Unlock()
}

// all is the union to put in the kernel's set at start.
func (x *exclusions) all() []netip.Prefix {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append(slices.Clone(x.policy), x.runtime...)
}

// runtimeList returns the runtime exclusions (for stats).
func (x *exclusions) runtimeList() []netip.Prefix {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]netip.Prefix(nil), x.runtime...)
}

// covers reports whether a is in an excluded network.
func (x *exclusions) covers(a netip.Addr) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return containsAddrOf(x.policy, a) || containsAddrOf(x.runtime, a)
}

// add adds a runtime exclusion (one that exists already is no error).
func (x *exclusions) add(p netip.Prefix) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if containsPrefix(x.runtime, p) {
		return nil
	}
	if !containsPrefix(x.policy, p) {
		if err := x.kernel.AddExcluded(p); err != nil {
			return err
		}
	}
	x.runtime = append(x.runtime, p)
	x.save(x.runtime)
	return nil
}

// remove removes a runtime exclusion; the policy's stay.
func (x *exclusions) remove(p netip.Prefix) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	i := slices.Index(x.runtime, p)
	if i < 0 {
		return fmt.Errorf("excluded network %s: %w", p, ErrNotFound)
	}
	if !containsPrefix(x.policy, p) {
		if err := x.kernel.RemoveExcluded(p); err != nil {
			return err
		}
	}
	x.runtime = slices.Delete(x.runtime, i, i+1)
	x.save(x.runtime)
	return nil
}

// setPolicy brings the kernel's set in line with a new policy's excluded
// networks (runtime exclusions stay). Before open, it only records them.
func (x *exclusions) setPolicy(next []netip.Prefix) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.kernel != nil {
		for _, p := range diffPrefixes(x.policy, next) {
			if !containsPrefix(x.runtime, p) {
				if err := x.kernel.RemoveExcluded(p); err != nil {
					x.log.Warn("removing excluded network", "prefix", p, "err", err)
				}
			}
		}
		for _, p := range diffPrefixes(next, x.policy) {
			if !containsPrefix(x.runtime, p) {
				if err := x.kernel.AddExcluded(p); err != nil {
					x.log.Warn("adding excluded network", "prefix", p, "err", err)
				}
			}
		}
	}
	x.policy = next
}

// diffPrefixes returns the prefixes of a that are not in b.
func diffPrefixes(a, b []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range a {
		if !containsPrefix(b, p) {
			out = append(out, p)
		}
	}
	return out
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	return slices.Contains(ps, p)
}

// containsAddrOf reports whether a prefix of ps contains a.
func containsAddrOf(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}
