package node

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/resolver"
	"github.com/trireme-go/trireme/tokens"
)

// What the daemon loads before it touches the kernel: the secrets and the
// token engine, the policy file (with the config's networks) and its
// updates.

// loadTokens loads the node's secrets (PKI or pre-shared key) and makes the
// token engine.
func loadTokens(cfg *Config) (*tokens.Engine, error) {
	sec, err := loadSecrets(cfg)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	tok, err := tokens.New(tokens.Config{Node: tokenNode(cfg, sec), Secrets: sec, Refresh: cfg.TokenRefresh})
	if err != nil {
		return nil, fmt.Errorf("tokens: %w", err)
	}
	return tok, nil
}

// tokenNode: in PKI mode the certificate names the node, and the config's
// node name is only used for local names.
func tokenNode(cfg *Config, sec tokens.Secrets) string {
	if cfg.Secrets.PKI() {
		return ""
	}
	return cfg.Node
}

// loadPolicy loads the policy file and follows it. The config's target
// and excluded networks are added to the file's before each content is
// compiled: one compilation per content.
func loadPolicy(cfg *Config, log *slog.Logger) (*resolver.File, error) {
	return resolver.NewFile(cfg.Policy, resolver.FileOptions{Logger: log,
		TargetNetworks: cfg.TargetNetworks, ExcludedNetworks: cfg.ExcludedNetworks})
}

// policySource is where the daemon's policy comes from: a policy file
// (resolver.File) or the Kubernetes source (resolver.Pushed).
type policySource interface {
	Current() *policy.Engine
	Updates() <-chan *policy.Engine
	Status() resolver.Status
	Run(ctx context.Context) error
}

// policyLoop puts each new policy in force.
func (d *Daemon) policyLoop() {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case e := <-d.res.Updates():
			d.excl.setPolicy(e.Set().ExcludedNetworks)
			d.enf.SetPolicy(e)
			d.log.Info("policy updated", "policies", len(e.Set().Policies))
			if d.cfg.OnPolicyChange == PolicyChangeReset {
				var out dataplane.Output
				n := d.enf.Reevaluate(time.Now(), &out)
				d.frames.sendInjected(&out)
				d.queueNotes(out.Notes)
				if n > 0 {
					d.log.Info("reset flows the new policy denies", "flows", n)
				}
			}
		}
	}
}
