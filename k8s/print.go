package k8s

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
)

// The policy file format (docs/policy.md), as written by MarshalSet.
type (
	fileSet struct {
		TargetNetworks   []string     `yaml:"targetNetworks,omitempty"`
		ExcludedNetworks []string     `yaml:"excludedNetworks,omitempty"`
		Policies         []filePolicy `yaml:"policies"`
	}
	filePolicy struct {
		Name        string `yaml:"name"`
		Description string `yaml:"description,omitempty"`
		Selector    string `yaml:"selector"`
		// A pointer, so that an isolating policy that allows nothing shows as
		// "ingress: []" while a policy that does not speak of ingress omits it.
		Ingress *[]fileRule `yaml:"ingress,omitempty"`
		Egress  *[]fileRule `yaml:"egress,omitempty"`
	}
	fileRule struct {
		Name   string     `yaml:"name,omitempty"`
		From   []filePeer `yaml:"from,omitempty"`
		To     []filePeer `yaml:"to,omitempty"`
		Ports  []string   `yaml:"ports,omitempty,flow"`
		Action string     `yaml:"action"`
	}
	filePeer struct {
		Selector string   `yaml:"selector,omitempty"`
		CIDR     string   `yaml:"cidr,omitempty"`
		Except   []string `yaml:"except,omitempty,flow"`
	}
)

// MarshalSet writes a policy set in the trireme policy file format, which
// policy.Parse reads back to an equivalent set. It handles what a translation
// produces: allow rules, selector and CIDR peers (no log or observe).
func MarshalSet(s *policy.Set) ([]byte, error) {
	out := fileSet{
		TargetNetworks:   prefixStrings(s.TargetNetworks),
		ExcludedNetworks: prefixStrings(s.ExcludedNetworks),
		Policies:         make([]filePolicy, 0, len(s.Policies)),
	}
	for _, p := range s.Policies {
		if p.Selector == nil {
			return nil, fmt.Errorf("policy %q: no selector", p.Name)
		}
		fp := filePolicy{Name: p.Name, Description: descriptionOf(&p), Selector: p.Selector.Text}
		if p.Ingress != nil {
			rules := make([]fileRule, 0, len(p.Ingress))
			for _, r := range p.Ingress {
				fr, err := fileRuleOf(&r)
				if err != nil {
					return nil, fmt.Errorf("policy %q: ingress %s: %v", p.Name, r.Name, err)
				}
				fr.From, fr.To = fr.To, nil
				rules = append(rules, fr)
			}
			fp.Ingress = &rules
		}
		if p.Egress != nil {
			rules := make([]fileRule, 0, len(p.Egress))
			for _, r := range p.Egress {
				fr, err := fileRuleOf(&r)
				if err != nil {
					return nil, fmt.Errorf("policy %q: egress %s: %v", p.Name, r.Name, err)
				}
				rules = append(rules, fr)
			}
			fp.Egress = &rules
		}
		out.Policies = append(out.Policies, fp)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&out); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func fileRuleOf(r *policy.Rule) (fileRule, error) {
	if r.Action != policy.Allow || r.Log || r.Observe != policy.Enforce {
		return fileRule{}, fmt.Errorf("only plain allow rules are written")
	}
	fr := fileRule{Name: r.Name, Action: r.Action.String()}
	for _, pe := range r.Peers {
		if pe.Selector != nil {
			fr.To = append(fr.To, filePeer{Selector: pe.Selector.Text})
			continue
		}
		fr.To = append(fr.To, filePeer{CIDR: pe.CIDR.String(), Except: prefixStrings(pe.Except)})
	}
	for _, pr := range r.Ports {
		if pr.Protocol == ipproto.Any {
			return fileRule{}, fmt.Errorf("port range of any protocol cannot be written")
		}
		fr.Ports = append(fr.Ports, pr.String())
	}
	return fr, nil
}

func prefixStrings(ps []netip.Prefix) []string {
	if len(ps) == 0 {
		return nil
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// descriptionOf says where a generated policy comes from (by the names
// Translate gives).
func descriptionOf(p *policy.Policy) string {
	base, kind, generated := strings.Cut(p.Name, "#")
	switch {
	case !generated:
		var dirs []string
		if p.Ingress != nil {
			dirs = append(dirs, "ingress")
		}
		if p.Egress != nil {
			dirs = append(dirs, "egress")
		}
		return "NetworkPolicy " + base + ": isolates its pods for " + strings.Join(dirs, " and ")
	case kind == "not-isolated-ingress", kind == "not-isolated-egress":
		return "pods of namespace " + base + " that no NetworkPolicy isolates for " + strings.TrimPrefix(kind, "not-isolated-")
	case strings.HasPrefix(kind, "named-ports-"):
		return "named ports of NetworkPolicy " + base + ", resolved on the pods it names"
	}
	return ""
}
