package k8s

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
)

// TestTranslateMatchesReference compares translation + engine with a
// reference evaluator written straight from the NetworkPolicy API
// documentation (no code shared with the translator), on random universes
// and random policies: every ordered pair of pods (and an outside address
// each way), every served port plus unserved ones, TCP, UDP and SCTP.
func TestTranslateMatchesReference(t *testing.T) {
	const rounds = 200
	rng := rand.New(rand.NewPCG(8, 2026))
	cells, allowed := 0, 0
	for round := range rounds {
		c := randomCluster(rng)
		tr, err := Translate(c, Options{})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		e := mustCompile(t, tr.Set)
		pols := make([]*policy.PUPolicy, len(tr.PUs))
		ids := make([]*identity.Identity, len(tr.PUs))
		for i := range tr.PUs {
			pols[i], ids[i] = e.ForPU(tr.PUs[i].Tags), identity.New(tr.PUs[i].Tags)
		}
		ext := netip.MustParseAddr("172.16.0.9")
		ports := []uint16{80, 81, 443, 8080, 9000}
		for _, proto := range []ipproto.Proto{ipproto.TCP, ipproto.UDP, ipproto.SCTP} {
			for _, port := range ports {
				for i := range tr.PUs {
					from := &tr.PUs[i]
					fromPod := refPod(c, from.Namespace, from.Name)
					pol := pols[i]
					// To an outside address: only the client's egress.
					got := pol.Egress(nil, ext, proto, port).Allowed()
					want := refAllowed(c, fromPod, nil, ext, proto, port, false)
					cells++
					if got != want {
						t.Fatalf("round %d: egress %s -> %s %v/%d: got %v, want %v\n%s", round, from.ID(), ext, proto, port, got, want, dump(c, tr))
					}
					// From an outside address: only the server's ingress.
					got = pol.Ingress(nil, ext, proto, port).Allowed()
					want = refAllowed(c, nil, fromPod, ext, proto, port, true)
					cells++
					if got != want {
						t.Fatalf("round %d: ingress %s -> %s %v/%d: got %v, want %v\n%s", round, ext, from.ID(), proto, port, got, want, dump(c, tr))
					}
					for j := range tr.PUs {
						to := &tr.PUs[j]
						toPod := refPod(c, to.Namespace, to.Name)
						gotE := pol.Egress(ids[j], to.IP(), proto, port).Allowed()
						gotI := pols[j].Ingress(ids[i], from.IP(), proto, port).Allowed()
						wantE := refAllowed(c, fromPod, toPod, to.IP(), proto, port, false)
						wantI := refAllowed(c, fromPod, toPod, from.IP(), proto, port, true)
						cells += 2
						if gotE != wantE || gotI != wantI {
							t.Fatalf("round %d: %s -> %s %v/%d: egress %v ingress %v, want %v %v\n%s",
								round, from.ID(), to.ID(), proto, port, gotE, gotI, wantE, wantI, dump(c, tr))
						}
						if gotE && gotI {
							allowed++
						}
					}
				}
			}
		}
	}
	// The generator must produce both outcomes in earnest.
	if allowed == 0 || allowed*10 > cells*9 {
		t.Fatalf("%d of %d cells allowed: the random policies are degenerate", allowed, cells)
	}
	t.Logf("%d rounds, %d decisions agree with the reference (%d pod pairs allowed)", rounds, cells, allowed)
}

func refPod(c *Cluster, ns, name string) *Pod {
	for i := range c.Pods {
		if c.Pods[i].Namespace == ns && c.Pods[i].Name == name {
			return &c.Pods[i]
		}
	}
	panic("no pod " + ns + "/" + name)
}

// refAllowed is the NetworkPolicy rule for one half of a connection from
// client to server (nil: the outside address addr). ingress: the server's
// ingress policies decide; else the client's egress policies.
func refAllowed(c *Cluster, client, server *Pod, addr netip.Addr, proto ipproto.Proto, port uint16, ingress bool) bool {
	subject, peer := client, server
	if ingress {
		subject, peer = server, client
	}
	isolated := false
	for i := range c.Policies {
		np := &c.Policies[i]
		if np.Namespace != subject.Namespace || !refSelects(&np.Spec.PodSelector, subject.Labels) {
			continue
		}
		types := np.Spec.PolicyTypes
		if len(types) == 0 {
			types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
			if len(np.Spec.Egress) > 0 {
				types = append(types, networkingv1.PolicyTypeEgress)
			}
		}
		want := networkingv1.PolicyTypeEgress
		if ingress {
			want = networkingv1.PolicyTypeIngress
		}
		applies := false
		for _, ty := range types {
			applies = applies || ty == want
		}
		if !applies {
			continue
		}
		isolated = true
		if ingress {
			for _, r := range np.Spec.Ingress {
				if refPeers(c, np.Namespace, r.From, peer, addr) && refPorts(r.Ports, server, proto, port) {
					return true
				}
			}
		} else {
			for _, r := range np.Spec.Egress {
				if refPeers(c, np.Namespace, r.To, peer, addr) && refPorts(r.Ports, server, proto, port) {
					return true
				}
			}
		}
	}
	return !isolated
}

func refSelects(s *metav1.LabelSelector, l map[string]string) bool {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		panic(err)
	}
	return sel.Matches(labels.Set(l))
}

func refNamespaceLabels(c *Cluster, ns string) map[string]string {
	m := map[string]string{MetadataNameLabel: ns}
	for _, n := range c.Namespaces {
		if n.Name == ns {
			for k, v := range n.Labels {
				m[k] = v
			}
		}
	}
	m[MetadataNameLabel] = ns
	return m
}

func refPeers(c *Cluster, policyNS string, peers []networkingv1.NetworkPolicyPeer, pod *Pod, addr netip.Addr) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if p.IPBlock != nil {
			cidr := netip.MustParsePrefix(p.IPBlock.CIDR)
			in := cidr.Contains(addr)
			for _, e := range p.IPBlock.Except {
				if netip.MustParsePrefix(e).Contains(addr) {
					in = false
				}
			}
			if in {
				return true
			}
			continue
		}
		if pod == nil {
			continue
		}
		nsOK := pod.Namespace == policyNS
		if p.NamespaceSelector != nil {
			nsOK = refSelects(p.NamespaceSelector, refNamespaceLabels(c, pod.Namespace))
		}
		podOK := p.PodSelector == nil || refSelects(p.PodSelector, pod.Labels)
		if nsOK && podOK {
			return true
		}
	}
	return false
}

// refPorts: named ports resolve on the server (the destination); outside
// servers have none.
func refPorts(ports []networkingv1.NetworkPolicyPort, server *Pod, proto ipproto.Proto, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pp := ipproto.TCP
		if p.Protocol != nil {
			switch *p.Protocol {
			case corev1.ProtocolUDP:
				pp = ipproto.UDP
			case corev1.ProtocolSCTP:
				pp = ipproto.SCTP
			}
		}
		if pp != proto {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.String:
			if server == nil {
				continue
			}
			for _, cp := range server.Ports {
				if cp.Name == p.Port.StrVal && cp.Protocol == proto && cp.Port == port {
					return true
				}
			}
		default:
			last := p.Port.IntVal
			if p.EndPort != nil {
				last = *p.EndPort
			}
			if int32(port) >= p.Port.IntVal && int32(port) <= last {
				return true
			}
		}
	}
	return false
}

// randomCluster: 3 namespaces with random labels, 2-3 pods each with random
// labels, IPs in 10.<ns>.0.0/16, and named ports drawn from a small set (the
// same name with different numbers and protocols on different pods), and
// 1-4 random policies.
func randomCluster(rng *rand.Rand) *Cluster {
	c := &Cluster{}
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	randLabels := func() map[string]string {
		m := map[string]string{}
		for range rng.IntN(3) {
			m[pick("app", "tier", "team")] = pick("a", "b", "c")
		}
		return m
	}
	protos := []ipproto.Proto{ipproto.TCP, ipproto.UDP, ipproto.SCTP}
	for n, ns := range []string{"x", "y", "z"} {
		if err := c.AddNamespace(Namespace{Name: ns, Labels: randLabels()}); err != nil {
			panic(err)
		}
		for p := range 2 + rng.IntN(2) {
			pod := Pod{Namespace: ns, Name: fmt.Sprintf("p%d", p), Labels: randLabels(),
				IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(n), 0, byte(p + 1)})}}
			for range rng.IntN(4) {
				name := pick("http", "metrics", "dns")
				if slices.ContainsFunc(pod.Ports, func(p Port) bool { return p.Name == name }) {
					continue // names are unique in a pod
				}
				pod.Ports = append(pod.Ports, Port{Name: name, Protocol: protos[rng.IntN(3)], Port: []uint16{80, 81, 8080, 9000}[rng.IntN(4)]})
			}
			if err := c.AddPod(pod); err != nil {
				panic(err)
			}
		}
	}
	randSelector := func() *metav1.LabelSelector {
		s := &metav1.LabelSelector{}
		switch rng.IntN(4) {
		case 0: // empty
		case 1, 2:
			s.MatchLabels = map[string]string{pick("app", "tier", "team"): pick("a", "b", "c")}
		case 3:
			op := []metav1.LabelSelectorOperator{metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn,
				metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}[rng.IntN(4)]
			r := metav1.LabelSelectorRequirement{Key: pick("app", "tier", "team"), Operator: op}
			if op == metav1.LabelSelectorOpIn || op == metav1.LabelSelectorOpNotIn {
				r.Values = []string{pick("a", "b"), pick("b", "c")}
			}
			s.MatchExpressions = []metav1.LabelSelectorRequirement{r}
		}
		return s
	}
	randPeers := func() []networkingv1.NetworkPolicyPeer {
		var out []networkingv1.NetworkPolicyPeer
		for range rng.IntN(3) {
			var p networkingv1.NetworkPolicyPeer
			switch rng.IntN(5) {
			case 0:
				p.PodSelector = randSelector()
			case 1:
				p.NamespaceSelector = randSelector()
			case 2:
				p.PodSelector, p.NamespaceSelector = randSelector(), randSelector()
			case 3:
				p.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{MetadataNameLabel: pick("x", "y", "z")}}
			case 4:
				p.IPBlock = &networkingv1.IPBlock{CIDR: pick("10.0.0.0/8", "10.1.0.0/16", "0.0.0.0/0", "172.16.0.0/12")}
				if rng.IntN(2) == 0 {
					p.IPBlock.CIDR = "10.0.0.0/8"
					p.IPBlock.Except = []string{pick("10.0.0.2/32", "10.2.0.0/16", "10.1.0.0/30")}
				}
			}
			out = append(out, p)
		}
		return out
	}
	randPorts := func() []networkingv1.NetworkPolicyPort {
		var out []networkingv1.NetworkPolicyPort
		for range rng.IntN(3) {
			var p networkingv1.NetworkPolicyPort
			if rng.IntN(3) > 0 {
				pr := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}[rng.IntN(3)]
				p.Protocol = &pr
			}
			switch rng.IntN(4) {
			case 0: // every port
			case 1:
				v := intstr.FromInt32([]int32{80, 81, 8080}[rng.IntN(3)])
				p.Port = &v
			case 2:
				v := intstr.FromInt32(80)
				end := []int32{80, 443, 8080}[rng.IntN(3)]
				p.Port, p.EndPort = &v, &end
			case 3:
				v := intstr.FromString(pick("http", "metrics", "dns", "none"))
				p.Port = &v
			}
			out = append(out, p)
		}
		return out
	}
	for i := range 1 + rng.IntN(4) {
		np := networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("np%d", i), Namespace: pick("x", "y", "z")}}
		np.Spec.PodSelector = *randSelector()
		switch rng.IntN(4) {
		case 0:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		case 1:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		case 2:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		}
		for range rng.IntN(3) {
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: randPeers(), Ports: randPorts()})
		}
		for range rng.IntN(3) {
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: randPeers(), Ports: randPorts()})
		}
		if err := c.AddPolicy(np); err != nil {
			panic(err)
		}
	}
	return c
}

func dump(c *Cluster, tr *Translation) string {
	var b strings.Builder
	for _, ns := range c.Namespaces {
		fmt.Fprintf(&b, "namespace %s %v\n", ns.Name, ns.Labels)
	}
	for _, p := range c.Pods {
		fmt.Fprintf(&b, "pod %s %v %v %v\n", p.ID(), p.Labels, p.IPs, p.Ports)
	}
	for _, np := range c.Policies {
		fmt.Fprintf(&b, "networkpolicy %s/%s %+v\n", np.Namespace, np.Name, np.Spec)
	}
	text, _ := MarshalSet(tr.Set)
	b.Write(text)
	return b.String()
}
