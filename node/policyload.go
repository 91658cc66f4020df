package node

import (
	"net/netip"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/tokens"
)

// tokenNode: in PKI mode the certificate names the node, and the config's
// node name is only used for local names.
func tokenNode(cfg *Config, sec tokens.Secrets) string {
	if cfg.Secrets.PKI() {
		return ""
	}
	return cfg.Node
}

func midStreamName(s string) string {
	if s == "acl" {
		return "allow-acl"
	}
	return s
}

// effectivePolicy adds the config's target and excluded networks to the
// policy file's.
func (d *Daemon) effectivePolicy(e *policy.Engine) *policy.Engine {
	if len(d.cfg.TargetNetworks) == 0 && len(d.cfg.ExcludedNetworks) == 0 {
		return e
	}
	s := *e.Set()
	s.TargetNetworks = append(append([]netip.Prefix(nil), s.TargetNetworks...), d.cfg.TargetNetworks...)
	s.ExcludedNetworks = append(append([]netip.Prefix(nil), s.ExcludedNetworks...), d.cfg.ExcludedNetworks...)
	merged, err := policy.Compile(&s)
	if err != nil {
		// The file compiled alone; adding valid prefixes cannot break it.
		d.log.Error("merging config networks into the policy", "err", err)
		return e
	}
	return merged
}

// policyLoop puts each new policy in force.
func (d *Daemon) policyLoop() {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case e := <-d.res.Updates():
			eff := d.effectivePolicy(e)
			d.excl.setPolicy(eff.Set().ExcludedNetworks)
			d.enf.SetPolicy(eff)
			d.log.Info("policy updated", "policies", len(eff.Set().Policies))
			if d.cfg.OnPolicyChange == "reset" {
				var out dataplane.Output
				n := d.enf.Reevaluate(time.Now(), &out)
				d.sendInjected(&out)
				d.queueNotes(out.Notes)
				if n > 0 {
					d.log.Info("reset flows the new policy denies", "flows", n)
				}
			}
		}
	}
}
