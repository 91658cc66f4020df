package k8s

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/policy"
)

// Options tune a translation.
type Options struct {
	// TargetNetworks of the resulting policy set. Default: the address of
	// every pod (/32 or /128), i.e. exactly the PUs that run behind an
	// enforcer. A deployment sets the cluster's pod CIDRs.
	TargetNetworks []netip.Prefix
	// ExcludedNetworks of the resulting policy set (default none).
	ExcludedNetworks []netip.Prefix
}

// PU is a pod as a trireme processing unit: its identity tags and addresses.
type PU struct {
	Namespace, Name string
	Tags            identity.Tags
	IPs             []netip.Addr
	Ports           []Port // container ports, for named ports and probes
}

// ID is "namespace/name".
func (p *PU) ID() string { return p.Namespace + "/" + p.Name }

// IP is the pod's first address (the zero Addr when it has none).
func (p *PU) IP() netip.Addr {
	if len(p.IPs) == 0 {
		return netip.Addr{}
	}
	return p.IPs[0]
}

// Translation is the trireme form of a cluster: one policy set for every
// pod, and the pods as PUs (sorted by namespace, then name).
type Translation struct {
	Set *policy.Set
	PUs []PU
}

// PU returns the PU of pod "namespace/name", or nil.
func (t *Translation) PU(id string) *PU {
	for i := range t.PUs {
		if t.PUs[i].ID() == id {
			return &t.PUs[i]
		}
	}
	return nil
}

// PodTags is the identity of a pod: its labels, @sys:namespace, @sys:name,
// and its namespace's labels as @ns:<key> (which include
// kubernetes.io/metadata.name).
func PodTags(ns Namespace, pod *Pod) identity.Tags {
	m := make(map[string]string, len(pod.Labels)+len(ns.Labels)+3)
	for k, v := range pod.Labels {
		m[k] = v
	}
	for k, v := range ns.Labels {
		m[NamespaceLabelPrefix+k] = v
	}
	m[NamespaceLabelPrefix+MetadataNameLabel] = ns.Name
	m[TagNamespace] = ns.Name
	m[TagName] = pod.Name
	return identity.NewTags(m)
}

// Names of the policies of a translation. A NetworkPolicy ns/name becomes
// policy "ns/name" (Kubernetes names contain no '/' and no '#', so the
// generated names cannot collide with each other or with user policies
// named like DNS names).
func policyName(ns, name string) string { return ns + "/" + name }

// Translate turns the cluster's NetworkPolicies into one trireme policy set,
// with Kubernetes semantics:
//
//   - a pod is isolated for ingress (egress) only when a policy of that type
//     selects it; a pod that is not gets an allow-all policy for that
//     direction (trireme denies what no rule allows);
//   - policies are additive (the set is the union); the engine needs the
//     server's ingress and the client's egress, as Kubernetes does;
//   - named ports resolve against the destination pod: ingress policies with
//     named ports are split per group of selected pods that resolve them
//     alike; egress named ports expand per group of destination pods.
//
// Every problem of every object is reported (errors.Join); on error there is
// no partial result.
func Translate(c *Cluster, opts Options) (*Translation, error) {
	nss, pods := c.sorted()
	nsByName := make(map[string]*Namespace, len(nss))
	for i := range nss {
		nsByName[nss[i].Name] = &nss[i]
	}
	var errs []error
	// Labels again, for clusters built without AddPod/AddNamespace: a label
	// key with '@' would forge a reserved tag (another namespace's identity).
	for _, ns := range nss {
		if err := validateLabels(ns.Labels); err != nil {
			errs = append(errs, fmt.Errorf("namespace %s: %v", ns.Name, err))
		}
	}
	for i := range pods {
		if err := validateLabels(pods[i].Labels); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %v", pods[i].ID(), err))
		}
	}
	nps := make([]*netpol, 0, len(c.Policies))
	for i := range c.Policies {
		n, err := parseNetpol(&c.Policies[i])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		nps = append(nps, n)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	tr := &translator{nsLabels: make(map[string]labels.Set, len(nss)), pods: pods, sels: map[string]*policy.Selector{}}
	for _, ns := range nss {
		tr.nsLabels[ns.Name] = labels.Set(ns.Labels)
	}
	out := &Translation{Set: &policy.Set{}}
	for i := range pods {
		p := &pods[i]
		out.PUs = append(out.PUs, PU{Namespace: p.Namespace, Name: p.Name, Tags: PodTags(*nsByName[p.Namespace], p), IPs: p.IPs, Ports: p.Ports})
	}
	set := out.Set
	if len(opts.TargetNetworks) > 0 {
		set.TargetNetworks = slices.Clone(opts.TargetNetworks)
	} else {
		for _, p := range pods {
			for _, a := range p.IPs {
				set.TargetNetworks = append(set.TargetNetworks, netip.PrefixFrom(a, a.BitLen()))
			}
		}
	}
	set.ExcludedNetworks = slices.Clone(opts.ExcludedNetworks)

	for _, n := range nps {
		set.Policies = append(set.Policies, tr.policies(n)...)
	}
	set.Policies = append(set.Policies, tr.defaults(nps)...)
	if len(tr.errs) > 0 {
		return nil, errors.Join(tr.errs...)
	}
	return out, nil
}

type translator struct {
	nsLabels map[string]labels.Set
	pods     []Pod
	sels     map[string]*policy.Selector // parsed selectors by text
	errs     []error
}

// selector parses (once) a selector the translation generated. It fails
// only on values trireme cannot carry in a selector (e.g. a pod name longer
// than a label value's 63 characters).
func (t *translator) selector(text string) *policy.Selector {
	if s, ok := t.sels[text]; ok {
		return s
	}
	s, err := policy.ParseSelector(text)
	if err != nil {
		t.errs = append(t.errs, fmt.Errorf("selector %q: %v", text, err))
		s = nil
	}
	t.sels[text] = s
	return s
}

func (t *translator) peers(ps []peer) []policy.Peer {
	out := make([]policy.Peer, 0, len(ps))
	for i := range ps {
		p := &ps[i]
		if p.block {
			out = append(out, policy.Peer{CIDR: p.cidr, Except: slices.Clone(p.except)})
			continue
		}
		out = append(out, policy.Peer{Selector: t.selector(p.selText)})
	}
	return out
}

// podPeers selects exactly the given pods (one selector per namespace).
func (t *translator) podPeers(pods []*Pod) []policy.Peer {
	byNS := map[string][]string{}
	var order []string
	for _, p := range pods {
		if _, ok := byNS[p.Namespace]; !ok {
			order = append(order, p.Namespace)
		}
		byNS[p.Namespace] = append(byNS[p.Namespace], p.Name)
	}
	out := make([]policy.Peer, 0, len(order))
	for _, ns := range order {
		out = append(out, policy.Peer{Selector: t.selector(namesSelector(ns, byNS[ns]))})
	}
	return out
}

func namesSelector(ns string, names []string) string {
	return TagNamespace + "=" + ns + "," + TagName + " in (" + strings.Join(names, ",") + ")"
}

func allowRule(name string, peers []policy.Peer, ports []policy.PortRange) policy.Rule {
	return policy.Rule{Name: name, Peers: peers, Ports: ports, Action: policy.Allow}
}

// policies translates one NetworkPolicy: the policy itself (rules that need
// no universe, and egress named ports expanded per destination), and one
// policy per group of selected pods for ingress named ports.
func (t *translator) policies(n *netpol) []policy.Policy {
	main := policy.Policy{Name: policyName(n.ns, n.name), Selector: t.selector(n.selText)}
	var named []policy.Policy
	if n.ingress {
		main.Ingress = []policy.Rule{}
		for _, r := range n.ingRules {
			if ports := r.ports.static(); ports != nil || r.ports.all {
				main.Ingress = append(main.Ingress, allowRule(ruleName("ingress", r.index, ""), t.peers(r.peers), ports))
			}
		}
		named = t.ingressNamed(n)
	}
	if n.egress {
		main.Egress = []policy.Rule{}
		for _, r := range n.egRules {
			if ports := r.ports.static(); ports != nil || r.ports.all {
				main.Egress = append(main.Egress, allowRule(ruleName("egress", r.index, ""), t.peers(r.peers), ports))
			}
			main.Egress = append(main.Egress, t.egressNamed(&r)...)
		}
	}
	return append([]policy.Policy{main}, named...)
}

// static is the rule's numeric ports; nil when it has none.
func (ps *ports) static() []policy.PortRange {
	if len(ps.numeric) == 0 {
		return nil
	}
	return slices.Clone(ps.numeric)
}

func ruleName(dir string, index int, suffix string) string {
	return fmt.Sprintf("%s-%d%s", dir, index, suffix)
}

// ingressNamed splits the policy's ingress named ports by the selected pod
// (the destination, so resolvable now): pods that resolve every rule's named
// ports alike share one policy.
func (t *translator) ingressNamed(n *netpol) []policy.Policy {
	hasNamed := false
	for _, r := range n.ingRules {
		hasNamed = hasNamed || len(r.ports.named) > 0
	}
	if !hasNamed {
		return nil
	}
	type group struct {
		key      string
		pods     []*Pod
		resolved [][]policy.PortRange // per ingress rule
	}
	var groups []*group
	for i := range t.pods {
		pod := &t.pods[i]
		if !n.selects(pod) {
			continue
		}
		resolved := make([][]policy.PortRange, len(n.ingRules))
		var key strings.Builder
		for j := range n.ingRules {
			resolved[j] = n.ingRules[j].ports.resolve(pod)
			fmt.Fprintf(&key, "%v;", resolved[j])
		}
		k := key.String()
		idx := slices.IndexFunc(groups, func(g *group) bool { return g.key == k })
		if idx < 0 {
			groups = append(groups, &group{key: k, resolved: resolved})
			idx = len(groups) - 1
		}
		groups[idx].pods = append(groups[idx].pods, pod)
	}
	var out []policy.Policy
	for _, g := range groups {
		p := policy.Policy{Ingress: []policy.Rule{}}
		for j, r := range n.ingRules {
			if len(g.resolved[j]) > 0 {
				p.Ingress = append(p.Ingress, allowRule(ruleName("ingress", r.index, "-named"), t.peers(r.peers), g.resolved[j]))
			}
		}
		if len(p.Ingress) == 0 {
			continue // nothing resolves on these pods: the named ports match nothing
		}
		names := make([]string, len(g.pods))
		for i, pod := range g.pods {
			names[i] = pod.Name
		}
		p.Name = fmt.Sprintf("%s#named-ports-%d", policyName(n.ns, n.name), len(out)+1)
		p.Selector = t.selector(n.selText + "," + TagName + " in (" + strings.Join(names, ",") + ")")
		out = append(out, p)
	}
	return out
}

// egressNamed expands an egress rule's named ports per destination pod: the
// pods its peers select (every pod when it has none), grouped by what the
// named ports resolve to on them. Destinations outside the universe have no
// named ports.
func (t *translator) egressNamed(r *rule) []policy.Rule {
	if len(r.ports.named) == 0 {
		return nil
	}
	type group struct {
		ports []policy.PortRange
		pods  []*Pod
	}
	var groups []*group
	for i := range t.pods {
		pod := &t.pods[i]
		if len(r.peers) > 0 && !slices.ContainsFunc(r.peers, func(p peer) bool { return p.matches(pod, t.nsLabels[pod.Namespace]) }) {
			continue
		}
		ports := r.ports.resolve(pod)
		if len(ports) == 0 {
			continue
		}
		idx := slices.IndexFunc(groups, func(g *group) bool { return slices.Equal(g.ports, ports) })
		if idx < 0 {
			groups = append(groups, &group{ports: ports})
			idx = len(groups) - 1
		}
		groups[idx].pods = append(groups[idx].pods, pod)
	}
	out := make([]policy.Rule, 0, len(groups))
	for _, g := range groups {
		out = append(out, allowRule(ruleName("egress", r.index, "-named"), t.podPeers(g.pods), g.ports))
	}
	return out
}

// defaults allows every direction in which a pod is not isolated: one
// allow-all policy per namespace and direction, naming its pods.
func (t *translator) defaults(nps []*netpol) []policy.Policy {
	var out []policy.Policy
	for _, dir := range []string{"ingress", "egress"} {
		byNS := map[string][]string{}
		var order []string
		for i := range t.pods {
			pod := &t.pods[i]
			isolated := slices.ContainsFunc(nps, func(n *netpol) bool {
				return (dir == "ingress" && n.ingress || dir == "egress" && n.egress) && n.selects(pod)
			})
			if isolated {
				continue
			}
			if _, ok := byNS[pod.Namespace]; !ok {
				order = append(order, pod.Namespace)
			}
			byNS[pod.Namespace] = append(byNS[pod.Namespace], pod.Name)
		}
		for _, ns := range order {
			p := policy.Policy{
				Name:     fmt.Sprintf("%s#not-isolated-%s", ns, dir),
				Selector: t.selector(namesSelector(ns, byNS[ns])),
			}
			all := []policy.Rule{allowRule(dir+"-all", nil, nil)}
			if dir == "ingress" {
				p.Ingress = all
			} else {
				p.Egress = all
			}
			out = append(out, p)
		}
	}
	return out
}
