package agent_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/k8s"
	"github.com/trireme-go/trireme/k8s/agent"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/testenv/controlplane"
)

// scene is a control plane and two simulated nodes, each running the
// daemon as a Kubernetes node agent, with pods wired as the CNI bridge
// plugin wires them (a veth per pod, its host end a port of the node's
// bridge, which plays cni0: the daemon has a bridge of its own).
type scene struct {
	t       *testing.T
	cp      *controlplane.ControlPlane
	c       kubernetes.Interface
	cluster *testenv.Cluster
	daemons []*testenv.Daemon
	pods    map[string]*pod // by namespace/name
}

type pod struct {
	pu   *testenv.PU
	node int
	obj  *corev1.Pod
}

func nodeName(i int) string { return fmt.Sprintf("node-%d", i) }

// newScene starts the control plane and nodes daemons. configure, when not
// nil, edits each node's config.
func newScene(t *testing.T, nodes int, configure func(i int, c *node.Config)) *scene {
	testenv.RequireRoot(t)
	cp := controlplane.Start(t, controlplane.Options{})
	s := &scene{t: t, cp: cp, c: cp.Client(), cluster: testenv.NewCluster(t, nodes, 0), pods: map[string]*pod{}}
	// The agents run as the DaemonSet's service account, with the RBAC of
	// deploy/kubernetes: what it grants must be enough.
	applyRBAC(t, s.c)
	agentCfg := cp.ConfigAs("system:serviceaccount:trireme-system:trireme", "system:serviceaccounts", "system:serviceaccounts:trireme-system", "system:authenticated")
	psk := testenv.PSKDir(t)
	for i, n := range s.cluster.Nodes {
		kubeconfig := n.Kubeconfig(agentCfg, n.APIProxy(cp.URL))
		d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: psk, OnPolicyChange: "reset",
			Extra: "flowLogAggregate: 0s\n",
			Configure: func(c *node.Config) {
				c.Policy = ""
				// The daemon's own bridge (for the PUs it creates); the
				// pods' bridge is the CNI's, which it must leave alone.
				c.Bridge = node.Bridge{Name: "trireme0", Subnet: node.Prefix{Prefix: netip.MustParsePrefix("10.99.0.0/24")}}
				c.Kubernetes = node.Kubernetes{Enabled: true, Kubeconfig: kubeconfig, NodeName: nodeName(i)}
				if configure != nil {
					configure(i, c)
				}
			}})
		s.daemons = append(s.daemons, d)
	}
	for _, d := range s.daemons {
		d.Start()
	}
	return s
}

// addPod creates a pod's network on node i (serving TCP 80 and 81) and the
// pod in the API server.
func (s *scene) addPod(i int, ns, name string, labels map[string]string) *pod {
	pu := s.cluster.Nodes[i].AddPU()
	pu.ServeEcho(80)
	pu.ServeEcho(81)
	o := testenv.CreatePod(s.t, s.c, testenv.PodSpec{Namespace: ns, Name: name, Labels: labels, NodeName: nodeName(i), IP: pu.Addr,
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}, {Name: "alt", ContainerPort: 81}}})
	p := &pod{pu: pu, node: i, obj: o}
	s.pods[ns+"/"+name] = p
	return p
}

func (s *scene) stats(i int) node.Stats {
	st, err := s.daemons[i].Client().Stats()
	if err != nil {
		s.t.Fatalf("stats of node %d: %v", i, err)
	}
	return st
}

// waitFor polls cond (every 20 ms, at most 15 s) and returns how long it took.
func (s *scene) waitFor(what string, cond func() bool) time.Duration {
	s.t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 15*time.Second {
			s.t.Fatalf("%s: not within 15 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// waitPods waits until node i enforces n pods.
func (s *scene) waitPods(i, n int) time.Duration {
	s.t.Helper()
	return s.waitFor(fmt.Sprintf("node %d enforcing %d pods", i, n), func() bool {
		k := s.stats(i).Kubernetes
		return k != nil && k.Synced && k.Pods == n
	})
}

// pu returns the daemon's PU of a pod (nil when it has none).
func (s *scene) pu(name string) *node.PUInfo {
	p := s.pods[name]
	pus, err := s.daemons[p.node].Client().ListPUs()
	if err != nil {
		s.t.Fatal(err)
	}
	for i := range pus {
		if pus[i].ID == agent.IDPrefix+string(p.obj.UID) {
			return &pus[i]
		}
	}
	return nil
}

const probeTimeout = 2 * time.Second

// connect probes from -> to:port: nil when it connected and echoed.
func (s *scene) connect(from, to string, port uint16) error {
	return s.pods[from].pu.Echo(netip.AddrPortFrom(s.pods[to].pu.Addr, port), "probe", probeTimeout)
}

// expect checks each probe "from>to:port" against want (open or closed).
func (s *scene) expect(step string, want bool, probes ...string) {
	s.t.Helper()
	for _, pr := range probes {
		from, rest, _ := strings.Cut(pr, ">")
		to, port, _ := strings.Cut(rest, ":")
		var p uint16
		fmt.Sscan(port, &p)
		err := s.connect(from, to, p)
		if (err == nil) != want {
			s.t.Errorf("%s: %s: connected %v (%v), want %v", step, pr, err == nil, err, want)
		}
	}
}

// converge polls the probe until it is open (want) or closed, and returns
// how long after start that took: the time from an API write to its
// effect on live traffic.
func (s *scene) converge(what, probe string, want bool, start time.Time) time.Duration {
	s.t.Helper()
	from, rest, _ := strings.Cut(probe, ">")
	to, port, _ := strings.Cut(rest, ":")
	var p uint16
	fmt.Sscan(port, &p)
	for {
		err := s.pods[from].pu.Echo(netip.AddrPortFrom(s.pods[to].pu.Addr, p), "probe", probeTimeout)
		// Closed means refused by a RST (the enforcer's), not a slow
		// answer on a loaded machine.
		refused := errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
		if want && err == nil || !want && refused {
			return time.Since(start)
		}
		if time.Since(start) > 15*time.Second {
			s.t.Fatalf("%s: %s still connected=%v after 15 s (%v)", what, probe, err == nil, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func tcpPort(p int32) *intstr.IntOrString    { v := intstr.FromInt32(p); return &v }
func namedPort(n string) *intstr.IntOrString { v := intstr.FromString(n); return &v }

// establish opens a connection from -> to:port and checks one round trip.
func (s *scene) establish(from, to string, port uint16) net.Conn {
	s.t.Helper()
	c, err := s.pods[from].pu.Dial(netip.AddrPortFrom(s.pods[to].pu.Addr, port), probeTimeout)
	if err != nil {
		s.t.Fatalf("establish %s -> %s:%d: %v", from, to, port, err)
	}
	s.t.Cleanup(func() { c.Close() })
	if err := testenv.EchoConn(c, "hello", probeTimeout); err != nil {
		s.t.Fatalf("establish %s -> %s:%d: %v", from, to, port, err)
	}
	return c
}

// TestAgent runs the agent against a real API server on two nodes: pods
// become PUs with their Kubernetes identity, NetworkPolicies are enforced
// across nodes and take effect within a second of the API write, a label
// change relabels the PU in place, a deleted pod's flows are closed, an
// API-server outage leaves enforcement in place and is reported, and a
// restarted agent keeps established flows and resyncs.
func TestAgent(t *testing.T) {
	s := newScene(t, 2, nil)
	ctx := context.Background()
	testenv.CreateNamespace(t, s.c, "x", map[string]string{"team": "x"})
	testenv.CreateNamespace(t, s.c, "y", map[string]string{"team": "y"})
	created := time.Now()
	s.addPod(0, "x", "a", map[string]string{"app": "a"})
	s.addPod(0, "y", "e", map[string]string{"app": "e"})
	s.addPod(1, "x", "b", map[string]string{"app": "b"})
	s.addPod(1, "y", "c", map[string]string{"app": "c"})
	s.waitPods(0, 2)
	s.waitPods(1, 2)
	t.Logf("4 pods created and enforced on their nodes in %v", time.Since(created).Round(time.Millisecond))

	// Identity: exactly the tags `trireme k8s translate` gives the pod.
	want := k8s.PodTags(k8s.Namespace{Name: "x", Labels: map[string]string{"team": "x", k8s.MetadataNameLabel: "x"}},
		&k8s.Pod{Namespace: "x", Name: "a", Labels: map[string]string{"app": "a"}}).Map()
	a := s.pu("x/a")
	if a == nil || !maps.Equal(a.Tags, want) {
		t.Fatalf("PU of x/a: %+v, want tags %v", a, want)
	}
	if a.Bridge != s.cluster.Nodes[0].Bridge || a.IPs[0] != s.pods["x/a"].pu.Addr {
		t.Errorf("PU of x/a on bridge %q with %v, want the CNI bridge %q and %v", a.Bridge, a.IPs, s.cluster.Nodes[0].Bridge, s.pods["x/a"].pu.Addr)
	}
	// A pod whose network the node cannot find (no namespace holds its
	// address: an unsupported CNI) is listed as unenforced, with why.
	testenv.CreatePod(t, s.c, testenv.PodSpec{Namespace: "x", Name: "ghost", NodeName: nodeName(0), IP: netip.MustParseAddr("10.80.0.250")})
	s.waitFor("the ghost pod listed as unenforced", func() bool {
		return strings.Contains(s.stats(0).Kubernetes.Unenforced["x/ghost"], "no network namespace")
	})
	if m, err := s.daemons[0].Client().Metrics(); err != nil || !strings.Contains(m, "trireme_kubernetes_pods_unenforced 1") {
		t.Errorf("metric with an unenforced pod: %v\n%s", err, grep(m, "trireme_kubernetes"))
	}
	if k := s.stats(0).Kubernetes; k.Pods != 2 {
		t.Errorf("pods enforced with the ghost: %d, want 2", k.Pods)
	}
	testenv.DeletePod(t, s.c, "x", "ghost")
	s.waitFor("the ghost pod gone from the unenforced list", func() bool { return len(s.stats(0).Kubernetes.Unenforced) == 0 })

	// No policy: every pod reaches every other, across nodes too.
	s.expect("no policy", true, "x/a>x/b:80", "y/c>x/a:80", "x/b>y/c:81", "y/e>x/b:80")

	// A policy isolating b for ingress: only app=a, on the named port http and 81.
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "b-from-a"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: namedPort("http")}, {Port: tcpPort(81)}},
			}},
		}}
	start := time.Now()
	if _, err := s.c.NetworkingV1().NetworkPolicies("x").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	lat := s.converge("policy create", "y/c>x/b:80", false, start)
	t.Logf("policy create: in force on live traffic %v after the API write", lat.Round(time.Millisecond))
	s.expect("b-from-a", true, "x/a>x/b:80", "x/a>x/b:81", "x/b>x/a:80", "y/c>x/a:80")
	s.expect("b-from-a", false, "y/c>x/b:81", "y/e>x/b:80", "x/a>x/b:82")

	// A label change relabels the PU in place: the server b becomes b2,
	// which a deny-all policy selects. Its established flow from a is
	// reset (onPolicyChange: reset); the PU is the same (same ID, veth).
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "deny-b2"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b2"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if _, err := s.c.NetworkingV1().NetworkPolicies("x").Create(ctx, deny, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	conn := s.establish("x/a", "x/b", 81)
	before := s.pu("x/b")
	start = time.Now()
	s.relabel("x", "b", map[string]string{"app": "b2"})
	// The relabel and the new translation are two steps (docs/kubernetes.md):
	// the PU's tags first, then the traffic.
	s.waitFor("x/b relabelled", func() bool { p := s.pu("x/b"); return p != nil && p.Tags["app"] == "b2" })
	lat = s.converge("relabel", "x/a>x/b:80", false, start)
	t.Logf("label change: in force on live traffic %v after the API write", lat.Round(time.Millisecond))
	after := s.pu("x/b")
	if after == nil || after.ID != before.ID || after.Veth != before.Veth || !after.Created.Equal(before.Created) || after.Tags["app"] != "b2" {
		t.Fatalf("relabel: PU before %+v, after %+v: want the same PU with app=b2", before, after)
	}
	if strings.Contains(s.daemons[1].Logs(), "stopped enforcing PU\" pu="+before.ID) {
		t.Errorf("relabel detached the PU")
	}
	if err := testenv.EchoConn(conn, "again", probeTimeout); err == nil {
		t.Errorf("established a -> b:81 still works after b was relabelled into a deny-all policy (onPolicyChange: reset)")
	}
	s.relabel("x", "b", map[string]string{"app": "b"})
	s.converge("relabel back", "x/a>x/b:80", true, time.Now())

	// A deleted pod stops being enforced; its flows are closed.
	s.establish("y/c", "x/a", 80)
	deleted := s.pu("y/c").ID
	testenv.DeletePod(t, s.c, "y", "c")
	s.waitPods(1, 1)
	if s.pu("y/c") != nil {
		t.Fatal("deleted pod still a PU")
	}
	s.waitFor("the deleted pod's flow closed", func() bool {
		for _, r := range s.daemons[1].Records() {
			if r.Local.ID == deleted && r.End == dataplane.EndPURemoved {
				return true
			}
		}
		return false
	})

	// API server outage: both nodes say so and keep enforcing.
	s.cp.StopAPIServer()
	for i := range s.daemons {
		s.waitFor(fmt.Sprintf("node %d reporting the outage", i), func() bool { return !s.stats(i).Kubernetes.Connected })
		m, err := s.daemons[i].Client().Metrics()
		if err != nil || !strings.Contains(m, "trireme_kubernetes_api_reachable 0") {
			t.Errorf("node %d: metric during the outage: %v\n%s", i, err, grep(m, "trireme_kubernetes"))
		}
		if !strings.Contains(s.daemons[i].Logs(), "kubernetes API server unreachable") {
			t.Errorf("node %d: no log of the outage", i)
		}
	}
	s.expect("during the outage", true, "x/a>x/b:80", "x/b>y/e:80")
	s.expect("during the outage", false, "y/e>x/b:80")
	s.cp.StartAPIServer()
	for i := range s.daemons {
		d := s.waitFor(fmt.Sprintf("node %d reporting the API server back", i), func() bool { return s.stats(i).Kubernetes.Connected })
		t.Logf("node %d: API server seen back %v after its restart", i, d.Round(time.Millisecond))
	}
	start = time.Now()
	if err := s.c.NetworkingV1().NetworkPolicies("x").Delete(ctx, "b-from-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	lat = s.converge("policy delete after the outage", "y/e>x/b:80", true, start)
	t.Logf("policy delete after the outage: in force %v after the API write (watches restarted)", lat.Round(time.Millisecond))

	// Agent restart: node 0's daemon stops and starts again; the
	// established flow survives, the PU is the same, and a policy created
	// while it was down is in force after the resync.
	conn = s.establish("x/a", "x/b", 81)
	before = s.pu("x/a")
	s.daemons[0].Stop(syscall.SIGTERM)
	egress := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "e-no-egress"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "e"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}}
	if _, err := s.c.NetworkingV1().NetworkPolicies("y").Create(ctx, egress, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.daemons[0].Start()
	s.waitPods(0, 2)
	s.converge("policy created while the agent was down", "y/e>x/b:80", false, time.Now())
	if err := testenv.EchoConn(conn, "after restart", probeTimeout); err != nil {
		t.Errorf("established a -> b:81 lost across the agent's restart: %v", err)
	}
	if after := s.pu("x/a"); after == nil || after.ID != before.ID {
		t.Errorf("x/a after the restart: %+v, want PU %s", after, before.ID)
	}
	s.expect("after restart", true, "x/a>x/b:80", "x/b>y/e:80")

	// The CNI bridges are untouched: still there, still with their gateway.
	for _, n := range s.cluster.Nodes {
		if out, err := n.Run(ctx, "ip", "-br", "addr", "show", "dev", n.Bridge); err != nil || !strings.Contains(out, n.Gateway.String()) {
			t.Errorf("CNI bridge %s of %s: %v %s", n.Bridge, n.Name, err, out)
		}
	}
}

// applyRBAC creates the ClusterRole and ClusterRoleBinding of the
// deploy manifests.
func applyRBAC(t *testing.T, c kubernetes.Interface) {
	data, err := os.ReadFile("../../deploy/kubernetes/trireme.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "ClusterRole":
			var r rbacv1.ClusterRole
			if err := yaml.UnmarshalStrict([]byte(doc), &r); err != nil {
				t.Fatal(err)
			}
			if _, err := c.RbacV1().ClusterRoles().Create(ctx, &r, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		case "ClusterRoleBinding":
			var b rbacv1.ClusterRoleBinding
			if err := yaml.UnmarshalStrict([]byte(doc), &b); err != nil {
				t.Fatal(err)
			}
			if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &b, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func (s *scene) relabel(ns, name string, labels map[string]string) {
	s.t.Helper()
	ctx := context.Background()
	o, err := s.c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	o.Labels = labels
	if _, err := s.c.CoreV1().Pods(ns).Update(ctx, o, metav1.UpdateOptions{}); err != nil {
		s.t.Fatal(err)
	}
}

func grep(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
