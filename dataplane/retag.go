package dataplane

import "github.com/trireme-go/trireme/identity"

// SetTags changes a PU's identity in place, as when an orchestrator
// relabels a running workload (a Kubernetes pod's labels): new connections
// carry a token with the new tags and are decided by the policy that
// selects them; the PU keeps its handle, its ports and its flows.
// Established flows keep their decision until Reevaluate judges them. It
// reports false for a removed PU.
func (e *Enforcer) SetTags(pu *PU, tags identity.Tags) bool {
	e.viewMu.Lock()
	defer e.viewMu.Unlock()
	if pu.view.Load() == nil {
		return false
	}
	pu.ident.Store(newPUIdent(tags, e.tok.NewLocal(tags)))
	eng := e.policy.Load()
	pu.view.Store(&puView{eng: eng, pol: eng.ForPU(tags)})
	return true
}
