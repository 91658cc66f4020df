package k8s_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trireme-go/trireme/k8s"
	"github.com/trireme-go/trireme/k8s/agent"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/testenv/controlplane"
)

// TestAPIServerConformance runs the cyclonus cases through a real API
// server, on two nodes: every step's namespaces, pods (their labels, ports
// and addresses) and NetworkPolicies are created, changed and deleted with
// client-go, and each node's daemon, a Kubernetes node agent, enforces
// what it watches; nothing is written to a daemon by the test. The pods
// are split between the two nodes (alternately, by name), whose CNI
// bridges share one L2 segment (192.168.0.0/16, the cases' addresses), so
// most probes cross nodes: the client's enforcer on one node, the
// server's on the other. A step is probed once both agents have put its
// state in force: the policy whose hash the test computes from the same
// API objects, and each node's pods attached with their tags. The checks
// are those of TestLiveConformance (every off-diagonal TCP cell, prompt
// RSTs, each denial recorded by the expected enforcer).
func TestAPIServerConformance(t *testing.T) {
	testenv.RequireRoot(t)
	start := time.Now()
	cases := loadLiveCases(t)
	cp := controlplane.Start(t, controlplane.Options{})
	c := cp.Client()

	sfx := testenv.Suffix()
	testenv.AssertNothingLeft(t, sfx)
	nodes := []*testenv.Node{
		testenv.NewNode(t, testenv.NodeOptions{Subnet: liveSubnet, Suffix: sfx, Index: 0}),
		testenv.NewNode(t, testenv.NodeOptions{Subnet: liveSubnet, Suffix: sfx, Index: 1}),
	}
	linkBridges(t, nodes[0], nodes[1])
	// Every pod of every case, on its node, created up front.
	var ids []string
	ips := map[string]netip.Addr{}
	for _, cs := range cases {
		for _, st := range cs.Steps {
			for id, p := range st.Pods {
				ip, err := netip.ParseAddr(p.IP)
				if err != nil || !liveSubnet.Contains(ip) {
					t.Fatalf("case %s: pod %s: address %q not in %v (%v)", cs.Name, id, p.IP, liveSubnet, err)
				}
				if old, ok := ips[id]; ok && old != ip {
					t.Fatalf("case %s: pod %s moves from %v to %v", cs.Name, id, old, ip)
				} else if !ok {
					ids = append(ids, id)
					ips[id] = ip
				}
			}
		}
	}
	slices.Sort(ids)
	pus := map[string]*testenv.PU{}
	nodeOf := map[string]int{}
	for i, id := range ids {
		nodeOf[id] = i % 2
		p := nodes[i%2].AddPUAddr(ips[id])
		p.ServeEcho(80)
		p.ServeEcho(81)
		serveUDPEcho(t, p, 80)
		serveUDPEcho(t, p, 81)
		pus[id] = p
	}
	psk := testenv.PSKDir(t)
	var ds []*testenv.Daemon
	for i, n := range nodes {
		kubeconfig := n.Kubeconfig(cp.Config, n.APIProxy(cp.URL))
		d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: psk, Extra: "flowLogAggregate: 0s\n",
			Configure: func(cfg *node.Config) {
				cfg.Policy = ""
				cfg.Bridge = node.Bridge{Name: "trireme0", Subnet: node.Prefix{Prefix: netip.MustParsePrefix("10.99.0.0/24")}}
				cfg.Kubernetes = node.Kubernetes{Enabled: true, Kubeconfig: kubeconfig, NodeName: fmt.Sprintf("node-%d", i)}
			}})
		d.Start()
		ds = append(ds, d)
	}
	u := &liveUniverse{t: t, ds: ds, pus: pus}
	api := &apiState{t: t, c: c, ds: ds, nodeOf: nodeOf, ips: ips}
	u.apply = api.apply
	ready := time.Now()

	var all liveTally
	for _, cs := range cases {
		all.cases++
		ok := true
		for si := range cs.Steps {
			all.steps++
			if u.runStep(fmt.Sprintf("%s step %d", cs.Name, si), &cs.Steps[si], &all) {
				all.stepsOK++
			} else {
				ok = false
			}
		}
		if ok {
			all.casesOK++
		}
	}
	slices.Sort(api.took)
	t.Logf("API-server conformance on 2 nodes: cases %d/%d, steps %d/%d, TCP and UDP probes %d (%d UDP; %d SCTP probes not run), "+
		"off-diagonal cells %d/%d (observed %d open, %d closed, %d of them by timeout rather than RST; %d diagonal cells not compared), "+
		"denials recorded by the expected side %d/%d (%d by the client's egress), %d pods, universe ready in %v, steps %v; "+
		"API writes to both nodes in force: median %v, max %v over %d steps",
		all.casesOK, all.cases, all.stepsOK, all.steps, all.probes, all.udpProbes, all.skipped, all.cellsOK, all.cells,
		all.allowed, all.denied, all.deniedByTimeout, all.diagonal, all.blamedOK, all.blamed, all.blamedEgress, len(pus),
		ready.Sub(start).Round(100*time.Millisecond), time.Since(ready).Round(100*time.Millisecond),
		api.took[len(api.took)/2].Round(time.Millisecond), api.took[len(api.took)-1].Round(time.Millisecond), len(api.took))
	for i, d := range ds {
		if st, err := d.Client().Stats(); err == nil {
			t.Logf("node %d: daemon counters %v, drops %v", i, st.Counters, st.Drops)
		}
	}
	if all.deniedByTimeout > 0 {
		t.Errorf("%d denied connections timed out instead of getting a prompt RST", all.deniedByTimeout)
	}
}

// linkBridges joins the two nodes' bridges with a veth: one L2 segment, as
// a flat pod network spanning the nodes.
func linkBridges(t *testing.T, a, b *testenv.Node) {
	a.MustDo(func() error {
		br, err := netlink.LinkByName(a.Bridge)
		if err != nil {
			return err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MasterIndex = "k8slink", br.Attrs().Index
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "k8slink", PeerNamespace: netlink.NsFd(b.NS)}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("k8slink")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	b.MustDo(func() error {
		br, err := netlink.LinkByName(b.Bridge)
		if err != nil {
			return err
		}
		l, err := netlink.LinkByName("k8slink")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
}

// apiState puts steps in force through the API server.
type apiState struct {
	t      *testing.T
	c      kubernetes.Interface
	ds     []*testenv.Daemon
	nodeOf map[string]int
	ips    map[string]netip.Addr
	took   []time.Duration // from the first API write to both nodes in force
}

func (a *apiState) apply(label string, st *k8s.Step, tr *k8s.Translation, text []byte) bool {
	t, ctx := a.t, context.Background()
	cl, err := st.Cluster()
	if err != nil {
		t.Errorf("%s: %v", label, err)
		return false
	}
	start := time.Now()
	// Namespaces: created, or their labels changed (the API server's own
	// kubernetes.io/metadata.name kept). Namespaces are never deleted:
	// without a namespace controller they would stay Terminating; a
	// namespace without pods or policies changes nothing.
	for _, ns := range cl.Namespaces {
		o, err := a.c.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			testenv.CreateNamespace(t, a.c, ns.Name, ns.Labels)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		want := maps.Clone(ns.Labels)
		if want == nil {
			want = map[string]string{}
		}
		want[k8s.MetadataNameLabel] = ns.Name
		if !maps.Equal(o.Labels, want) {
			o.Labels = want
			if _, err := a.c.CoreV1().Namespaces().Update(ctx, o, metav1.UpdateOptions{}); err != nil {
				t.Fatalf("%s: namespace %s: %v", label, ns.Name, err)
			}
		}
	}
	// Pods: deleted when gone from the step or when their ports changed
	// (a pod's containers cannot change), relabelled in place, created.
	want := map[string]*k8s.Pod{}
	for i := range cl.Pods {
		want[cl.Pods[i].ID()] = &cl.Pods[i]
	}
	have, err := a.c.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	existing := map[string]bool{}
	for i := range have.Items {
		o := &have.Items[i]
		id := o.Namespace + "/" + o.Name
		w := want[id]
		cur, _ := k8s.PodFromObject(o)
		if w == nil || !slices.Equal(cur.Ports, w.Ports) {
			testenv.DeletePod(t, a.c, o.Namespace, o.Name)
			continue
		}
		existing[id] = true
		if !maps.Equal(o.Labels, w.Labels) && !(len(o.Labels) == 0 && len(w.Labels) == 0) {
			o.Labels = w.Labels
			if _, err := a.c.CoreV1().Pods(o.Namespace).Update(ctx, o, metav1.UpdateOptions{}); err != nil {
				t.Fatalf("%s: pod %s: %v", label, id, err)
			}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(want)) {
		if existing[id] {
			continue
		}
		p := want[id]
		var ports []corev1.ContainerPort
		for _, pt := range p.Ports {
			ports = append(ports, corev1.ContainerPort{Name: pt.Name, ContainerPort: int32(pt.Port), Protocol: corev1.Protocol(k8s.ProtocolName(pt.Protocol))})
		}
		testenv.CreatePod(t, a.c, testenv.PodSpec{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels,
			NodeName: fmt.Sprintf("node-%d", a.nodeOf[id]), IP: a.ips[id], Ports: ports})
	}
	// NetworkPolicies: created, updated, deleted.
	wantNP := map[string]*networkingv1.NetworkPolicy{}
	for i := range cl.Policies {
		np := &cl.Policies[i]
		if np.Namespace == "" {
			np.Namespace = k8s.DefaultNamespace
		}
		wantNP[np.Namespace+"/"+np.Name] = np
	}
	haveNP, err := a.c.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	existing = map[string]bool{}
	for i := range haveNP.Items {
		o := &haveNP.Items[i]
		id := o.Namespace + "/" + o.Name
		w := wantNP[id]
		if w == nil {
			if err := a.c.NetworkingV1().NetworkPolicies(o.Namespace).Delete(ctx, o.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatalf("%s: delete networkpolicy %s: %v", label, id, err)
			}
			continue
		}
		existing[id] = true
		// Compared with the defaults the API server applied to the
		// wanted spec (dry run): what it would store.
		dry, err := a.c.NetworkingV1().NetworkPolicies(o.Namespace).Create(ctx, fresh(w), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("%s: networkpolicy %s: %v", label, id, err)
		}
		if err != nil || !equality.Semantic.DeepEqual(dry.Spec, o.Spec) {
			o.Spec = w.Spec
			if _, err := a.c.NetworkingV1().NetworkPolicies(o.Namespace).Update(ctx, o, metav1.UpdateOptions{}); err != nil {
				t.Fatalf("%s: update networkpolicy %s: %v", label, id, err)
			}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(wantNP)) {
		if existing[id] {
			continue
		}
		w := wantNP[id]
		if _, err := a.c.NetworkingV1().NetworkPolicies(w.Namespace).Create(ctx, fresh(w), metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: create networkpolicy %s: %v", label, id, err)
		}
	}
	if !a.waitInForce(label, tr) {
		return false
	}
	a.took = append(a.took, time.Since(start))
	return true
}

// fresh is a NetworkPolicy to create: only its name, namespace and spec.
func fresh(np *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: np.Namespace, Name: np.Name}, Spec: *np.Spec.DeepCopy()}
}

// waitInForce waits until both nodes enforce the API's state: the policy
// translated from the API objects (its hash) and, on each node, its pods
// with the tags of the step's translation tr.
func (a *apiState) waitInForce(label string, tr *k8s.Translation) bool {
	t, ctx := a.t, context.Background()
	pods, err := a.c.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsl, err := a.c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	npl, err := a.c.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var nss []*corev1.Namespace
	var ps []*corev1.Pod
	var nps []*networkingv1.NetworkPolicy
	for i := range nsl.Items {
		nss = append(nss, &nsl.Items[i])
	}
	for i := range pods.Items {
		ps = append(ps, &pods.Items[i])
	}
	for i := range npl.Items {
		nps = append(nps, &npl.Items[i])
	}
	cl, _, _ := agent.Universe("", slog.Default(), nss, ps, nps)
	apiTr, err := k8s.Translate(cl, k8s.Options{})
	if err != nil {
		t.Errorf("%s: translate the API objects: %v", label, err)
		return false
	}
	text, err := k8s.MarshalSet(apiTr.Set)
	if err != nil {
		t.Fatal(err)
	}
	hash := agent.PolicyHash(text)
	// What each node must enforce: its pods (PU ID by UID) with their tags.
	wantPUs := []map[string]map[string]string{{}, {}}
	for i := range pods.Items {
		o := &pods.Items[i]
		pu := tr.PU(o.Namespace + "/" + o.Name)
		if pu == nil {
			t.Errorf("%s: pod %s/%s in the API server, not in the step", label, o.Namespace, o.Name)
			return false
		}
		wantPUs[a.nodeOf[pu.ID()]][agent.IDPrefix+string(o.UID)] = tagMapOf(pu)
	}
	// Two agents, an API server and etcd share the machine with the rest of
	// the suite: under load a watch event has been seen to take more than
	// 15 s to reach an agent. The step waits up to a minute for both nodes
	// to converge (the median is ~60 ms, docs/kubernetes.md).
	const converge = time.Minute
	deadline := time.Now().Add(converge)
	for i, d := range a.ds {
		for {
			var why string
			st, err := d.Client().Stats()
			switch {
			case err != nil:
				why = err.Error()
			case st.Kubernetes == nil || st.Kubernetes.PolicyHash != hash:
				why = fmt.Sprintf("policy %v, want %s", st.Kubernetes, hash)
			default:
				why = a.podsDiffer(d, wantPUs[i])
			}
			if why == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: node %d did not put the API's state in force within %v: %s (agent: %+v)", label, i, converge, why, st.Kubernetes)
				return false
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return true
}

// podsDiffer says how the daemon's pods differ from want ("" when they do not).
func (a *apiState) podsDiffer(d *testenv.Daemon, want map[string]map[string]string) string {
	pus, err := d.Client().ListPUs()
	if err != nil {
		return err.Error()
	}
	got := map[string]map[string]string{}
	for _, p := range pus {
		if strings.HasPrefix(p.ID, agent.IDPrefix) {
			got[p.ID] = p.Tags
		}
	}
	if !maps.EqualFunc(got, want, maps.Equal) {
		return fmt.Sprintf("pods %v, want %v", got, want)
	}
	return ""
}
