// Package k8s translates Kubernetes NetworkPolicy objects (networking.k8s.io/v1)
// into trireme policy, with exact Kubernetes semantics, for a known universe of
// namespaces and pods.
//
// The translation needs the universe because Kubernetes makes three things
// depend on it that a tag selector cannot express on its own: whether a pod is
// isolated at all (no selecting policy means "allow everything", which is not
// expressible as a union of allow rules without knowing who is not selected),
// and named ports, which resolve against the destination pod's container ports
// (egress rules expand per destination pod, ingress policies split per group
// of selected pods). The daemon re-translates on every change of a policy,
// namespace or pod.
package k8s

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
)

// MetadataNameLabel is the label the API server sets on every namespace to
// the namespace's name (immutable, automatic since Kubernetes 1.21).
const MetadataNameLabel = "kubernetes.io/metadata.name"

// Reserved tag keys of a pod's identity. Users cannot set them: label keys
// cannot contain '@'.
const (
	// TagNamespace holds the pod's namespace.
	TagNamespace = identity.SysPrefix + "namespace"
	// TagName holds the pod's name.
	TagName = identity.SysPrefix + "name"
	// NamespaceLabelPrefix prefixes the pod's namespace's labels:
	// namespace label k=v becomes tag @ns:k=v on every pod of the namespace.
	NamespaceLabelPrefix = "@ns:"
)

// DefaultNamespace is the namespace of objects that name none (as kubectl).
const DefaultNamespace = "default"

// Namespace is a namespace and its labels.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Port is a container port of a pod.
type Port struct {
	Name     string // "" when unnamed
	Protocol ipproto.Proto
	Port     uint16
}

// Pod is what the translation needs of a pod.
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	IPs             []netip.Addr // empty while the pod has no address
	Ports           []Port
}

// ID is "namespace/name".
func (p *Pod) ID() string { return p.Namespace + "/" + p.Name }

// Cluster is a universe: namespaces, pods and the NetworkPolicies in force,
// in creation order (order does not change the result: policies are additive).
type Cluster struct {
	Namespaces []Namespace
	Pods       []Pod
	Policies   []networkingv1.NetworkPolicy
}

// AddNamespace adds a namespace; duplicates are an error.
func (c *Cluster) AddNamespace(ns Namespace) error {
	if err := validateDNSLabel(ns.Name); err != nil {
		return fmt.Errorf("namespace %q: %v", ns.Name, err)
	}
	if c.namespace(ns.Name) != nil {
		return fmt.Errorf("namespace %q defined twice", ns.Name)
	}
	if err := validateLabels(ns.Labels); err != nil {
		return fmt.Errorf("namespace %q: %v", ns.Name, err)
	}
	c.Namespaces = append(c.Namespaces, ns)
	return nil
}

// AddPod adds a pod; duplicates are an error.
func (c *Cluster) AddPod(p Pod) error {
	if p.Namespace == "" {
		p.Namespace = DefaultNamespace
	}
	if err := validateDNSLabel(p.Namespace); err != nil {
		return fmt.Errorf("pod %s: namespace: %v", p.ID(), err)
	}
	if err := validateName(p.Name); err != nil {
		return fmt.Errorf("pod %s: %v", p.ID(), err)
	}
	if err := validateLabels(p.Labels); err != nil {
		return fmt.Errorf("pod %s: %v", p.ID(), err)
	}
	for i := range c.Pods {
		if c.Pods[i].Namespace == p.Namespace && c.Pods[i].Name == p.Name {
			return fmt.Errorf("pod %s defined twice", p.ID())
		}
	}
	c.Pods = append(c.Pods, p)
	return nil
}

// AddPolicy adds a NetworkPolicy (validated by Translate); duplicates are an
// error.
func (c *Cluster) AddPolicy(np networkingv1.NetworkPolicy) error {
	if np.Namespace == "" {
		np.Namespace = DefaultNamespace
	}
	for i := range c.Policies {
		if c.Policies[i].Namespace == np.Namespace && c.Policies[i].Name == np.Name {
			return fmt.Errorf("networkpolicy %s/%s defined twice", np.Namespace, np.Name)
		}
	}
	c.Policies = append(c.Policies, np)
	return nil
}

func (c *Cluster) namespace(name string) *Namespace {
	for i := range c.Namespaces {
		if c.Namespaces[i].Name == name {
			return &c.Namespaces[i]
		}
	}
	return nil
}

// PodFromObject extracts a Pod from a core/v1 Pod: labels, IPs
// (status.podIPs, else status.podIP) and the ports of its containers and
// init containers (restartable init containers serve ports too).
func PodFromObject(o *corev1.Pod) (Pod, error) {
	p := Pod{Namespace: o.Namespace, Name: o.Name, Labels: o.Labels}
	if p.Namespace == "" {
		p.Namespace = DefaultNamespace
	}
	ips := make([]string, 0, 2)
	for _, ip := range o.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && o.Status.PodIP != "" {
		ips = append(ips, o.Status.PodIP)
	}
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return Pod{}, fmt.Errorf("pod %s: status.podIP %q: %v", p.ID(), s, err)
		}
		p.IPs = append(p.IPs, a.Unmap())
	}
	containers := append(slices.Clip(o.Spec.InitContainers), o.Spec.Containers...)
	for _, ct := range containers {
		for _, cp := range ct.Ports {
			proto, err := protocolOf(cp.Protocol)
			if err != nil {
				return Pod{}, fmt.Errorf("pod %s: container %s: port %d: %v", p.ID(), ct.Name, cp.ContainerPort, err)
			}
			if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				return Pod{}, fmt.Errorf("pod %s: container %s: containerPort %d: out of range 1-65535", p.ID(), ct.Name, cp.ContainerPort)
			}
			if cp.Name != "" {
				if err := validatePortName(cp.Name); err != nil {
					return Pod{}, fmt.Errorf("pod %s: container %s: port name %q: %v", p.ID(), ct.Name, cp.Name, err)
				}
			}
			p.Ports = append(p.Ports, Port{Name: cp.Name, Protocol: proto, Port: uint16(cp.ContainerPort)})
		}
	}
	return p, nil
}

// protocolOf maps a Kubernetes protocol name; "" is TCP.
func protocolOf(p corev1.Protocol) (ipproto.Proto, error) {
	switch p {
	case "", corev1.ProtocolTCP:
		return ipproto.TCP, nil
	case corev1.ProtocolUDP:
		return ipproto.UDP, nil
	case corev1.ProtocolSCTP:
		return ipproto.SCTP, nil
	}
	return 0, fmt.Errorf("protocol %q: want TCP, UDP or SCTP", string(p))
}

// ProtocolName is the Kubernetes name of a protocol (TCP, UDP, SCTP).
func ProtocolName(p ipproto.Proto) string {
	switch p {
	case ipproto.TCP:
		return "TCP"
	case ipproto.UDP:
		return "UDP"
	case ipproto.SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", p)
}

// CheckNamespaces reports pods and policies in a namespace the cluster does
// not define ("default" always exists), as the API server refuses them.
// Load applies it; Translate does not: there, an undefined namespace has only
// its kubernetes.io/metadata.name label (a policy in a namespace without pods
// selects nothing).
func (c *Cluster) CheckNamespaces() error {
	defined := map[string]bool{DefaultNamespace: true}
	for _, ns := range c.Namespaces {
		defined[ns.Name] = true
	}
	var errs []error
	undefined := func(what, ns string) {
		if !defined[ns] {
			errs = append(errs, fmt.Errorf("%s: namespace %q is not defined (add a Namespace object; "+
				"note that YAML reads an unquoted y, n, yes, no, on or off as a boolean)", what, ns))
		}
	}
	for i := range c.Pods {
		undefined("pod "+c.Pods[i].ID(), c.Pods[i].Namespace)
	}
	for _, np := range c.Policies {
		ns := cmp.Or(np.Namespace, DefaultNamespace)
		undefined("networkpolicy "+ns+"/"+np.Name, ns)
	}
	return errors.Join(errs...)
}

// sorted returns the namespaces and pods sorted by name, every namespace
// with its kubernetes.io/metadata.name label, undefined namespaces that pods
// or policies name included.
func (c *Cluster) sorted() ([]Namespace, []Pod) {
	nss := make(map[string]map[string]string, len(c.Namespaces)+1)
	for _, ns := range c.Namespaces {
		nss[ns.Name] = ns.Labels
	}
	for _, p := range c.Pods {
		if _, ok := nss[p.Namespace]; !ok {
			nss[p.Namespace] = nil
		}
	}
	for _, np := range c.Policies {
		ns := cmp.Or(np.Namespace, DefaultNamespace)
		if _, ok := nss[ns]; !ok {
			nss[ns] = nil
		}
	}
	out := make([]Namespace, 0, len(nss))
	for name, l := range nss {
		m := make(map[string]string, len(l)+1)
		for k, v := range l {
			m[k] = v
		}
		m[MetadataNameLabel] = name
		out = append(out, Namespace{Name: name, Labels: m})
	}
	slices.SortFunc(out, func(a, b Namespace) int { return cmp.Compare(a.Name, b.Name) })
	pods := slices.Clone(c.Pods)
	slices.SortFunc(pods, func(a, b Pod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out, pods
}
