package k8s

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
)

// bigCluster: nss namespaces of pods pods each (app=app-<i%10>, named ports
// http and metrics), and per namespace a default deny, an allow from the
// namespace's frontend on the named port http, and an egress policy to
// every namespace's app-1 on http (expanded per destination pod).
func bigCluster(b *testing.B, nss, pods int) *Cluster {
	c := &Cluster{}
	tcp := corev1.ProtocolTCP
	for n := range nss {
		ns := fmt.Sprintf("ns-%d", n)
		if err := c.AddNamespace(Namespace{Name: ns, Labels: map[string]string{"team": fmt.Sprintf("t%d", n%5)}}); err != nil {
			b.Fatal(err)
		}
		for p := range pods {
			err := c.AddPod(Pod{Namespace: ns, Name: fmt.Sprintf("pod-%d", p),
				Labels: map[string]string{"app": fmt.Sprintf("app-%d", p%10)},
				IPs:    []netip.Addr{netip.AddrFrom4([4]byte{10, byte(n), byte(p >> 8), byte(p)})},
				Ports: []Port{{Name: "http", Protocol: ipproto.TCP, Port: uint16(8000 + p%3)},
					{Name: "metrics", Protocol: ipproto.TCP, Port: 9090}}})
			if err != nil {
				b.Fatal(err)
			}
		}
		http := intstr.FromString("http")
		meta := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name, Namespace: ns} }
		for _, np := range []networkingv1.NetworkPolicy{
			{ObjectMeta: meta("deny"), Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{"Ingress", "Egress"}}},
			{ObjectMeta: meta("web"), Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "app-1"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "app-0"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &http}}}}}},
			{ObjectMeta: meta("out"), Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "app-0"}},
				Egress: []networkingv1.NetworkPolicyEgressRule{{
					To:    []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "app-1"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Port: &http}}}}}},
		} {
			if err := c.AddPolicy(np); err != nil {
				b.Fatal(err)
			}
		}
	}
	return c
}

// BenchmarkTranslate: the work the daemon redoes on every change of a
// policy, namespace or pod (translation, then compilation).
func BenchmarkTranslate(b *testing.B) {
	for _, size := range []struct{ nss, pods int }{{3, 3}, {10, 30}, {20, 100}} {
		c := bigCluster(b, size.nss, size.pods)
		b.Run(fmt.Sprintf("pods=%d/policies=%d", size.nss*size.pods, len(c.Policies)), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Translate(c, Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("pods=%d/policies=%d/compile", size.nss*size.pods, len(c.Policies)), func(b *testing.B) {
			tr, err := Translate(c, Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := policy.Compile(tr.Set); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
