package node

import (
	"fmt"
	"sync"
)

// puRegistry is the one list of the PUs being enforced, indexed by ID, by
// host veth, by namespace (for the attach checks) and by their dataplane
// handle (for the notes of the enforcer). Its lock guards the indexes and
// the fields of a PU that change while it is enforced (its state); the
// rest of a livePU is set before it is added and read-only after.
//
// The registry does not serialise changes to the set of PUs: a check and
// the add it allows are one step under Daemon.changes.
type puRegistry struct {
	mu      sync.RWMutex
	byID    map[string]*livePU
	byVeth  map[string]*livePU
	byNetns map[nsID]*livePU
}

func newPURegistry() *puRegistry {
	return &puRegistry{byID: map[string]*livePU{}, byVeth: map[string]*livePU{}, byNetns: map[nsID]*livePU{}}
}

// add registers p. An ID registered already is an error, and p is not
// added. A veth or namespace of another PU is taken over by p (a monitor's
// view wins; the control API checks for those conflicts first, see
// checkAttachable).
func (r *puRegistry) add(p *livePU) error {
	// Not shared yet: set outside the lock (a stat system call).
	p.netns, _ = netnsIdentity(p.info.NetNS)
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.byID[p.info.ID]; ok {
		return fmt.Errorf("%w: PU %s is registered already (%s)", ErrConflict, p.info.ID, old.info.Name)
	}
	r.byID[p.info.ID] = p
	if p.info.Veth != "" {
		r.byVeth[p.info.Veth] = p
	}
	if p.netns != (nsID{}) {
		r.byNetns[p.netns] = p
	}
	return nil
}

// remove unregisters the PU with this ID and returns it.
func (r *puRegistry) remove(id string) (*livePU, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.byID[id]
	if !ok {
		return nil, false
	}
	delete(r.byID, id)
	if r.byVeth[p.info.Veth] == p {
		delete(r.byVeth, p.info.Veth)
	}
	if r.byNetns[p.netns] == p {
		delete(r.byNetns, p.netns)
	}
	return p, true
}

// get returns the PU with this ID.
func (r *puRegistry) get(id string) (*livePU, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	p, ok := r.byID[id]
	return p, ok
}

// lookupVeth returns the PU whose host veth this is.
func (r *puRegistry) lookupVeth(veth string) *livePU {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.byVeth[veth]
}

// lookupNetns returns the PU in the namespace at path. A namespace that
// is gone may have had its inode number reused: the PU's namespace must
// still be the one at path.
func (r *puRegistry) lookupNetns(path string) *livePU {
	id, ok := netnsIdentity(path)
	if !ok {
		return nil
	}
	r.mu.RLock()
	p := r.byNetns[id]
	r.mu.RUnlock()
	if p != nil && !sameNetns(p.info.NetNS, path) {
		return nil
	}
	return p
}

// len is the number of PUs registered.
func (r *puRegistry) len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byID)
}

// all returns the PUs registered (in no order).
func (r *puRegistry) all() []*livePU {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*livePU, 0, len(r.byID))
	for _, p := range r.byID {
		out = append(out, p)
	}
	return out
}

// each calls fn for every PU registered (in no order), under the
// registry's read lock: fn reads, and must not call the registry.
func (r *puRegistry) each(fn func(p *livePU)) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, p := range r.byID {
		fn(p)
	}
}

// setState records a PU's state (running, paused); false for an unknown
// PU.
func (r *puRegistry) setState(id string, state PUState) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.byID[id]
	if ok {
		p.info.State = state
	}
	return ok
}
