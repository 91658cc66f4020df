package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/trireme-go/trireme/k8s"
	"github.com/trireme-go/trireme/k8s/agent"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/testenv/controlplane"
)

const (
	benchNamespaces = 20
	benchPods       = 1000
	benchPolicies   = 200
)

// populate creates 20 namespaces, 1,000 running pods (spread over 10
// nodes, each with named ports) and 200 NetworkPolicies of every shape
// (pod and namespace selectors, named and numbered ports, egress named
// ports, ipBlock with except).
func populate(b *testing.B, c kubernetes.Interface) {
	ctx := context.Background()
	work := make(chan func(), 64)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for f := range work {
				f()
			}
		})
	}
	fail := func(err error) {
		if err != nil {
			b.Error(err)
		}
	}
	for n := range benchNamespaces {
		ns := fmt.Sprintf("ns%d", n)
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"team": fmt.Sprintf("t%d", n%5), "env": []string{"prod", "dev"}[n%2]}}}, metav1.CreateOptions{})
		fail(err)
	}
	for i := range benchPods {
		work <- func() {
			ns := fmt.Sprintf("ns%d", i%benchNamespaces)
			o := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pod-%d", i),
				Labels: map[string]string{"app": fmt.Sprintf("app%d", i%10), "tier": []string{"web", "api", "db"}[i%3]}},
				Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%10), Containers: []corev1.Container{{Name: "c", Image: "x",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(8000 + i%7)}, {Name: "metrics", ContainerPort: 9090}}}}}}
			o, err := c.CoreV1().Pods(ns).Create(ctx, o, metav1.CreateOptions{})
			if err != nil {
				fail(err)
				return
			}
			o.Status.Phase = corev1.PodRunning
			ip := fmt.Sprintf("10.244.%d.%d", i/250, i%250+1)
			o.Status.PodIP, o.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
			_, err = c.CoreV1().Pods(ns).UpdateStatus(ctx, o, metav1.UpdateOptions{})
			fail(err)
		}
	}
	for i := range benchPolicies {
		work <- func() {
			ns := fmt.Sprintf("ns%d", i%benchNamespaces)
			named, num := intstrName("http"), intstrNum(9090)
			np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("np-%d", i)},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", i%10)}},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From: []networkingv1.NetworkPolicyPeer{
							{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "web"}}},
							{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", i%5)}}},
						},
						Ports: []networkingv1.NetworkPolicyPort{{Port: &named}, {Port: &num}},
					}},
				}}
			if i%4 == 0 {
				np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
				np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{
					{To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "db"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Port: &named}}},
					{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.128/25"}}}}},
				}
			}
			_, err := c.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{})
			fail(err)
		}
	}
	close(work)
	wg.Wait()
}

// BenchmarkNodeView measures, with a real API server holding 1,000 pods
// and 200 NetworkPolicies: the informers' first sync and the memory their
// caches hold (reported once), and, per iteration, the time from the
// informers' state to a compiled policy (the universe, the translation
// and policy.Compile: what the agent does after each burst of changes).
func BenchmarkNodeView(b *testing.B) {
	cp := controlplane.Start(b, controlplane.Options{})
	c := cp.Client()
	start := time.Now()
	populate(b, c)
	b.Logf("created %d namespaces, %d pods, %d NetworkPolicies in %v", benchNamespaces, benchPods, benchPolicies, time.Since(start).Round(time.Millisecond))

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start = time.Now()
	f := informers.NewSharedInformerFactory(c, 0)
	pods := f.Core().V1().Pods().Informer()
	nss := f.Core().V1().Namespaces().Informer()
	nps := f.Networking().V1().NetworkPolicies().Informer()
	stop := make(chan struct{})
	defer func() { close(stop); f.Shutdown() }()
	f.Start(stop)
	if !cache.WaitForCacheSync(stop, pods.HasSynced, nss.HasSynced, nps.HasSynced) {
		b.Fatal("informers did not sync")
	}
	synced := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapAlloc) - float64(before.HeapAlloc)
	b.Logf("informers synced in %v; their caches hold %.1f MB of heap (%d pods, %d namespaces, %d policies)",
		synced.Round(time.Millisecond), heap/1e6, len(pods.GetStore().List()), len(nss.GetStore().List()), len(nps.GetStore().List()))

	var policies int
	for b.Loop() {
		var ns []*corev1.Namespace
		var ps []*corev1.Pod
		var np []*networkingv1.NetworkPolicy
		for _, o := range nss.GetStore().List() {
			ns = append(ns, o.(*corev1.Namespace))
		}
		for _, o := range pods.GetStore().List() {
			ps = append(ps, o.(*corev1.Pod))
		}
		for _, o := range nps.GetStore().List() {
			np = append(np, o.(*networkingv1.NetworkPolicy))
		}
		cl, local, _ := agent.Universe("node-3", slog.Default(), ns, ps, np)
		if len(local) != benchPods/10 {
			b.Fatalf("%d local pods", len(local))
		}
		tr, err := k8s.Translate(cl, k8s.Options{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := policy.Compile(tr.Set); err != nil {
			b.Fatal(err)
		}
		policies = len(tr.Set.Policies)
	}
	b.ReportMetric(float64(policies), "trireme-policies")
	b.ReportMetric(heap/1e6, "MB-informers")
	b.ReportMetric(float64(synced.Milliseconds()), "ms-first-sync")
}

func intstrName(n string) intstr.IntOrString { return intstr.FromString(n) }
func intstrNum(p int32) intstr.IntOrString   { return intstr.FromInt32(p) }
