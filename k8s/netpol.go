package k8s

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
)

// netpol is a validated NetworkPolicy, ready to translate and to evaluate
// against the universe (isolation, named ports).
type netpol struct {
	ns, name          string
	podSel            labels.Selector // spec.podSelector, pod labels
	selText           string          // the trireme selector of the policy's pods
	ingress, egress   bool            // effective policyTypes
	ingRules, egRules []rule
}

// rule is one ingress or egress rule.
type rule struct {
	index int
	peers []peer // empty: every peer
	ports ports
}

// ports is a rule's port list, split into what needs no universe (numeric
// ranges) and what resolves against the destination pod (named ports).
type ports struct {
	all     bool // no ports listed: every port of every protocol
	numeric []policy.PortRange
	named   []namedPort
}

type namedPort struct {
	proto ipproto.Proto
	name  string
}

// peer is one entry of from/to.
type peer struct {
	policyNS string
	pod, ns  labels.Selector // nil when absent
	selText  string          // trireme selector (selector peers)
	block    bool
	cidr     netip.Prefix
	except   []netip.Prefix
}

// matches reports whether the peer selects the pod (ipBlock: by any of its
// addresses), the way Kubernetes evaluates it.
func (p *peer) matches(pod *Pod, nsLabels labels.Set) bool {
	if p.block {
		for _, a := range pod.IPs {
			if inBlock(a, p.cidr, p.except) {
				return true
			}
		}
		return false
	}
	if p.ns == nil {
		if pod.Namespace != p.policyNS {
			return false
		}
	} else if !p.ns.Matches(nsLabels) {
		return false
	}
	return p.pod == nil || p.pod.Matches(labels.Set(pod.Labels))
}

func inBlock(a netip.Addr, cidr netip.Prefix, except []netip.Prefix) bool {
	if !cidr.Contains(a) {
		return false
	}
	for _, e := range except {
		if e.Contains(a) {
			return false
		}
	}
	return true
}

// selects reports whether the policy applies to the pod.
func (n *netpol) selects(pod *Pod) bool {
	return pod.Namespace == n.ns && n.podSel.Matches(labels.Set(pod.Labels))
}

// resolve returns the ports a rule's named ports stand for on the
// destination pod: the container ports with that name and protocol.
func (ps *ports) resolve(dst *Pod) []policy.PortRange {
	var out []policy.PortRange
	for _, np := range ps.named {
		for _, cp := range dst.Ports {
			if cp.Name == np.name && cp.Protocol == np.proto {
				r := policy.PortRange{Protocol: cp.Protocol, First: cp.Port, Last: cp.Port}
				if !slices.Contains(out, r) {
					out = append(out, r)
				}
			}
		}
	}
	slices.SortFunc(out, comparePortRange)
	return out
}

func comparePortRange(a, b policy.PortRange) int {
	if a.Protocol != b.Protocol {
		return int(a.Protocol) - int(b.Protocol)
	}
	if a.First != b.First {
		return int(a.First) - int(b.First)
	}
	return int(a.Last) - int(b.Last)
}

// parseNetpol validates a NetworkPolicy the way the API server does (as far
// as the translation depends on it) and prepares it. Errors name the object
// and the field.
func parseNetpol(np *networkingv1.NetworkPolicy) (*netpol, error) {
	n := &netpol{ns: np.Namespace, name: np.Name}
	if n.ns == "" {
		n.ns = DefaultNamespace
	}
	fail := func(field string, err error) error {
		return fmt.Errorf("networkpolicy %s/%s: %s: %v", n.ns, n.name, field, err)
	}
	if err := validateDNSLabel(n.ns); err != nil {
		return nil, fail("metadata.namespace", err)
	}
	if err := validateName(n.name); err != nil {
		return nil, fail("metadata.name", err)
	}
	spec := &np.Spec
	reqs, sel, err := selectorReqs(&spec.PodSelector, "")
	if err != nil {
		return nil, fail("spec.podSelector", err)
	}
	n.podSel = sel
	n.selText = joinReqs(append(reqs, TagNamespace+"="+n.ns))

	// policyTypes: as listed; when absent, Ingress always and Egress when
	// the policy has egress rules.
	if len(spec.PolicyTypes) == 0 {
		n.ingress, n.egress = true, len(spec.Egress) > 0
	}
	for i, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			n.ingress = true
		case networkingv1.PolicyTypeEgress:
			n.egress = true
		default:
			return nil, fail(fmt.Sprintf("spec.policyTypes[%d]", i), fmt.Errorf("%q: want Ingress or Egress", string(t)))
		}
	}
	for i, r := range spec.Ingress {
		field := fmt.Sprintf("spec.ingress[%d]", i)
		pr, err := parseRule(n.ns, r.From, "from", r.Ports)
		if err != nil {
			return nil, fail(field, err)
		}
		pr.index = i
		n.ingRules = append(n.ingRules, pr)
	}
	for i, r := range spec.Egress {
		field := fmt.Sprintf("spec.egress[%d]", i)
		pr, err := parseRule(n.ns, r.To, "to", r.Ports)
		if err != nil {
			return nil, fail(field, err)
		}
		pr.index = i
		n.egRules = append(n.egRules, pr)
	}
	return n, nil
}

func parseRule(ns string, peers []networkingv1.NetworkPolicyPeer, peersField string, ps []networkingv1.NetworkPolicyPort) (rule, error) {
	var r rule
	for i := range peers {
		p, err := parsePeer(ns, &peers[i])
		if err != nil {
			return rule{}, fmt.Errorf("%s[%d]%v", peersField, i, err)
		}
		r.peers = append(r.peers, p)
	}
	r.ports.all = len(ps) == 0
	for i := range ps {
		if err := r.ports.add(&ps[i]); err != nil {
			return rule{}, fmt.Errorf("ports[%d]%v", i, err)
		}
	}
	return r, nil
}

// parsePeer's errors start with the sub-field (".ipBlock.cidr: ...") or ": ".
func parsePeer(ns string, in *networkingv1.NetworkPolicyPeer) (peer, error) {
	p := peer{policyNS: ns}
	if in.IPBlock != nil {
		if in.PodSelector != nil || in.NamespaceSelector != nil {
			return peer{}, fmt.Errorf(": ipBlock cannot be combined with podSelector or namespaceSelector")
		}
		cidr, err := netip.ParsePrefix(strings.TrimSpace(in.IPBlock.CIDR))
		if err != nil {
			return peer{}, fmt.Errorf(".ipBlock.cidr: %v", err)
		}
		p.block, p.cidr = true, cidr.Masked()
		for i, s := range in.IPBlock.Except {
			e, err := netip.ParsePrefix(strings.TrimSpace(s))
			if err != nil {
				return peer{}, fmt.Errorf(".ipBlock.except[%d]: %v", i, err)
			}
			e = e.Masked()
			if e.Addr().Is4() != p.cidr.Addr().Is4() || e.Bits() <= p.cidr.Bits() || !p.cidr.Contains(e.Addr()) {
				return peer{}, fmt.Errorf(".ipBlock.except[%d]: %s is not a strict subset of cidr %s", i, e, p.cidr)
			}
			p.except = append(p.except, e)
		}
		return p, nil
	}
	if in.PodSelector == nil && in.NamespaceSelector == nil {
		return peer{}, fmt.Errorf(": must specify podSelector, namespaceSelector or ipBlock")
	}
	var reqs []string
	if in.PodSelector != nil {
		r, sel, err := selectorReqs(in.PodSelector, "")
		if err != nil {
			return peer{}, fmt.Errorf(".podSelector: %v", err)
		}
		p.pod, reqs = sel, r
	}
	if in.NamespaceSelector != nil {
		r, sel, err := selectorReqs(in.NamespaceSelector, NamespaceLabelPrefix)
		if err != nil {
			return peer{}, fmt.Errorf(".namespaceSelector: %v", err)
		}
		// Every pod has @sys:namespace: requiring it keeps an empty (or
		// purely negative) namespace selector to pods, as in Kubernetes.
		p.ns, reqs = sel, append(reqs, append(r, TagNamespace)...)
	} else {
		reqs = append(reqs, TagNamespace+"="+ns)
	}
	p.selText = joinReqs(reqs)
	return p, nil
}

// add validates one entry of ports.
func (ps *ports) add(in *networkingv1.NetworkPolicyPort) error {
	var proto corev1.Protocol
	if in.Protocol != nil {
		proto = *in.Protocol
	}
	pr, err := protocolOf(proto)
	if err != nil {
		return fmt.Errorf(".protocol: %v", err)
	}
	if in.Port == nil {
		if in.EndPort != nil {
			return fmt.Errorf(".endPort: may not be specified without port")
		}
		// {} or {protocol: P}: every port of that protocol (TCP by default).
		ps.numeric = append(ps.numeric, policy.PortRange{Protocol: pr, First: 0, Last: 65535})
		return nil
	}
	if in.Port.Type == intstr.String {
		if in.EndPort != nil {
			return fmt.Errorf(".endPort: may not be specified with a named port")
		}
		if err := validatePortName(in.Port.StrVal); err != nil {
			return fmt.Errorf(".port: %q: %v", in.Port.StrVal, err)
		}
		ps.named = append(ps.named, namedPort{proto: pr, name: in.Port.StrVal})
		return nil
	}
	first := in.Port.IntVal
	if first < 1 || first > 65535 {
		return fmt.Errorf(".port: %d: out of range 1-65535", first)
	}
	last := first
	if in.EndPort != nil {
		last = *in.EndPort
		if last < first || last > 65535 {
			return fmt.Errorf(".endPort: %d: must be between port (%d) and 65535", last, first)
		}
	}
	ps.numeric = append(ps.numeric, policy.PortRange{Protocol: pr, First: uint16(first), Last: uint16(last)})
	return nil
}

// selectorReqs validates a label selector and renders it as trireme selector
// requirements (string syntax) with every key prefixed by prefix ("" for pod
// labels, "@ns:" for namespace labels), plus the Kubernetes selector itself to
// evaluate it on the universe. An empty selector gives no requirement.
func selectorReqs(ls *metav1.LabelSelector, prefix string) ([]string, labels.Selector, error) {
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return nil, nil, err
	}
	keys := make([]string, 0, len(ls.MatchLabels))
	for k := range ls.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	reqs := make([]string, 0, len(keys)+len(ls.MatchExpressions))
	for _, k := range keys {
		reqs = append(reqs, prefix+k+"="+ls.MatchLabels[k])
	}
	for _, e := range ls.MatchExpressions {
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			reqs = append(reqs, prefix+e.Key+" in ("+strings.Join(e.Values, ",")+")")
		case metav1.LabelSelectorOpNotIn:
			reqs = append(reqs, prefix+e.Key+" notin ("+strings.Join(e.Values, ",")+")")
		case metav1.LabelSelectorOpExists:
			reqs = append(reqs, prefix+e.Key)
		case metav1.LabelSelectorOpDoesNotExist:
			reqs = append(reqs, "!"+prefix+e.Key)
		}
	}
	return reqs, sel, nil
}

func joinReqs(reqs []string) string { return strings.Join(reqs, ",") }
