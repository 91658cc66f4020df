package controlplane

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// events records what a shared informer delivered, for waiting on.
type events struct{ ch chan string }

func newEvents() *events { return &events{ch: make(chan string, 256)} }

func (e *events) handler() cache.ResourceEventHandler {
	name := func(obj any) string {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		m, err := meta(obj)
		if err != nil {
			return "?"
		}
		return m.GetNamespace() + "/" + m.GetName()
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { e.ch <- "add " + name(obj) },
		UpdateFunc: func(_, obj any) { e.ch <- "update " + name(obj) },
		DeleteFunc: func(obj any) { e.ch <- "delete " + name(obj) },
	}
}

func meta(obj any) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, errors.New("not an object")
	}
	return m, nil
}

// wait waits (up to 10 s) for the event want, ignoring others.
func (e *events) wait(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-e.ch:
			if got == want {
				return
			}
		case <-timeout:
			t.Fatalf("informer: no %q within 10 s", want)
		}
	}
}

// none checks that no event names obj during d.
func (e *events) none(t *testing.T, obj string, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case got := <-e.ch:
			if strings.HasSuffix(got, " "+obj) {
				t.Fatalf("informer: unexpected %q", got)
			}
		case <-timeout:
			return
		}
	}
}

// TestControlPlane starts a control plane and works with it as the node
// agent will: client-go objects, shared informers (a node's pods by field
// selector), pod status set by the test, grace-period-0 deletion, RBAC of
// a service account, and server-side dry-run validation of manifests.
func TestControlPlane(t *testing.T) {
	start := time.Now()
	cp := Start(t, Options{})
	t.Logf("control plane ready in %v at %s", time.Since(start).Round(time.Millisecond), cp.URL)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := cp.Client()

	ns, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "shop", Labels: map[string]string{"team": "a"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// Informers as the agent will run them: pods of its node only.
	factory := informers.NewSharedInformerFactory(c, 0)
	nodePods := informers.NewSharedInformerFactoryWithOptions(c, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", "node-a").String()
	}))
	podEvents, nsEvents, polEvents := newEvents(), newEvents(), newEvents()
	podInformer := nodePods.Core().V1().Pods().Informer()
	mustHandler(t, podInformer, podEvents)
	mustHandler(t, factory.Core().V1().Namespaces().Informer(), nsEvents)
	mustHandler(t, factory.Networking().V1().NetworkPolicies().Informer(), polEvents)
	factory.Start(ctx.Done())
	nodePods.Start(ctx.Done())
	t.Cleanup(func() { cancel(); factory.Shutdown(); nodePods.Shutdown() }) // before the control plane stops
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.HasSynced,
		factory.Core().V1().Namespaces().Informer().HasSynced,
		factory.Networking().V1().NetworkPolicies().Informer().HasSynced) {
		t.Fatal("informers did not sync")
	}
	nsEvents.wait(t, "add /shop")

	// A pod on node-a (no scheduler: the test sets spec.nodeName) and one
	// on node-b, which node-a's informer must not see.
	pod := func(name, nodeName string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns.Name, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{
				NodeName: nodeName,
				Containers: []corev1.Container{{Name: "web", Image: "example.invalid/web",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}}}},
			},
		}
	}
	web, err := c.CoreV1().Pods(ns.Name).Create(ctx, pod("web", "node-a"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Pods(ns.Name).Create(ctx, pod("elsewhere", "node-b"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	podEvents.wait(t, "add shop/web")

	// No kubelet: the test gives the pod its IP and phase.
	web.Status.Phase = corev1.PodRunning
	web.Status.PodIP = "10.244.1.5"
	web.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.5"}}
	if web, err = c.CoreV1().Pods(ns.Name).UpdateStatus(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	podEvents.wait(t, "update shop/web")
	obj, ok, err := podInformer.GetStore().GetByKey("shop/web")
	if err != nil || !ok {
		t.Fatalf("shop/web not in the informer's store: %v", err)
	}
	if got := obj.(*corev1.Pod); got.Status.PodIP != "10.244.1.5" || got.Status.Phase != corev1.PodRunning {
		t.Fatalf("informer's pod: ip %q phase %q", got.Status.PodIP, got.Status.Phase)
	}
	if keys := podInformer.GetStore().ListKeys(); len(keys) != 1 {
		t.Fatalf("node-a's informer holds %v, want only shop/web", keys)
	}

	// A label change reaches the informer as an update.
	web.Labels["app"] = "web2"
	if web, err = c.CoreV1().Pods(ns.Name).Update(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	podEvents.wait(t, "update shop/web")

	// NetworkPolicy create, update.
	tcp, port := corev1.ProtocolTCP, intstr.FromString("http")
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-http", Namespace: ns.Name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web2"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
				From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{
					MatchLabels: map[string]string{"team": "a"}}}},
			}},
		},
	}
	if np, err = c.NetworkingV1().NetworkPolicies(ns.Name).Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	polEvents.wait(t, "add shop/allow-http")
	np.Spec.Ingress[0].From = nil
	if _, err = c.NetworkingV1().NetworkPolicies(ns.Name).Update(ctx, np, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	polEvents.wait(t, "update shop/allow-http")

	// The API server validates: an invalid policy is refused.
	bad := np.DeepCopy()
	bad.ResourceVersion, bad.Name = "", "bad"
	bad.Spec.Ingress[0].Ports[0].Port = &intstr.IntOrString{Type: intstr.Int, IntVal: 70000}
	if _, err := c.NetworkingV1().NetworkPolicies(ns.Name).Create(ctx, bad, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Fatalf("port 70000: got %v, want Invalid", err)
	}

	// Without a kubelet a graceful delete never completes: grace period 0
	// removes the pod at once.
	if err := c.CoreV1().Pods(ns.Name).Delete(ctx, "web", *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	podEvents.wait(t, "delete shop/web")
	if _, err := c.CoreV1().Pods(ns.Name).Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("deleted pod: got %v, want NotFound", err)
	}
	podEvents.none(t, "shop/elsewhere", 200*time.Millisecond)
	etcdRSS, apiRSS := cp.RSS()
	t.Logf("RSS: etcd %d MB, kube-apiserver %d MB", etcdRSS>>20, apiRSS>>20)
	if etcdRSS == 0 || apiRSS == 0 {
		t.Fatalf("RSS of running processes: %d %d", etcdRSS, apiRSS)
	}

	t.Run("kubeconfig", func(t *testing.T) {
		cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		kc, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kc.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{}); err != nil {
			t.Fatalf("client from the kubeconfig file: %v", err)
		}
		if v, err := kc.Discovery().ServerVersion(); err != nil || !strings.HasPrefix(v.GitVersion, "v1.") {
			t.Fatalf("server version %v, %v", v, err)
		} else {
			t.Logf("server version %s", v.GitVersion)
		}
	})

	t.Run("rbac", func(t *testing.T) {
		// What the agent's ClusterRole will look like: read-only pods.
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: ns.Name}}
		if _, err := c.CoreV1().ServiceAccounts(ns.Name).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}}}
		if _, err := c.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "agent-pod-reader"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "pod-reader"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "agent", Namespace: ns.Name}}}
		if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		groups := []string{"system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"}
		// The binding is in force (the RBAC authorizer's cache lags its
		// creation) once the grant is; the refusals are checked then.
		err := CheckAccess(ctx, c, Subject{User: "system:serviceaccount:shop:agent", Groups: groups},
			[]Access{{Resource: "pods", Verb: "list"}, {Resource: "pods", Verb: "watch"}, {Resource: "pods", Verb: "get", Namespace: ns.Name}},
			[]Access{{Resource: "pods", Verb: "delete", Namespace: ns.Name}, {Group: "networking.k8s.io", Resource: "networkpolicies", Verb: "list"}})
		if err != nil {
			t.Fatal(err)
		}
		// And so it is for a client acting as the agent (impersonated):
		// each call asked once.
		agent, err := kubernetes.NewForConfig(cp.ConfigAs("system:serviceaccount:shop:agent", groups[:2]...))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := agent.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil {
			t.Fatalf("agent lists pods: %v", err)
		}
		if err := agent.CoreV1().Pods(ns.Name).Delete(ctx, "elsewhere", *metav1.NewDeleteOptions(0)); !apierrors.IsForbidden(err) {
			t.Fatalf("agent deletes a pod: got %v, want Forbidden", err)
		}
		if _, err := agent.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("agent lists policies it was not granted: got %v, want Forbidden", err)
		}
	})

	// CheckAccess fails: a grant never in force (nothing binds the
	// subject), and a refusal the subject is allowed (an administrator).
	t.Run("check-access", func(t *testing.T) {
		nobody := Subject{User: "system:serviceaccount:shop:nobody", Groups: []string{"system:serviceaccounts", "system:authenticated"}}
		err := checkAccess(ctx, c, nobody, []Access{{Resource: "pods", Verb: "list"}}, []Access{{Resource: "secrets", Verb: "get"}}, time.Second)
		if err == nil || !strings.Contains(err.Error(), "may not list pods (a grant") || !strings.Contains(err.Error(), "1 refusals not checked") {
			t.Errorf("a grant never in force: %v", err)
		}
		admin := Subject{User: "admin", Groups: []string{"system:masters", "system:authenticated"}}
		err = CheckAccess(ctx, c, admin, []Access{{Resource: "pods", Verb: "list"}}, []Access{{Resource: "secrets", Verb: "get", Namespace: "shop"}})
		if err == nil || !strings.Contains(err.Error(), "admin may get secrets in shop (a refusal)") {
			t.Errorf("a refusal allowed: %v", err)
		}
	})

	t.Run("dry-run", func(t *testing.T) {
		if err := ValidateManifests(ctx, cp.Config, "deploy.yaml", []byte(validManifest)); err != nil {
			t.Fatalf("valid manifest: %v", err)
		}
		// Nothing was persisted.
		if _, err := c.AppsV1().DaemonSets(ns.Name).Get(ctx, "trireme", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("dry-run DaemonSet: got %v, want NotFound", err)
		}
		if _, err := c.RbacV1().ClusterRoles().Get(ctx, "trireme-agent", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("dry-run ClusterRole: got %v, want NotFound", err)
		}
		for _, tc := range []struct{ name, manifest, want string }{
			{"unknown field", strings.Replace(validManifest, "hostNetwork: true", "hostNetwork: true\n      hostNetwrk: true", 1),
				`deploy.yaml:21: DaemonSet shop/trireme: .*\.spec\.template\.spec\.hostNetwrk: field not declared in schema`},
			{"invalid value", strings.Replace(validManifest, "- name: agent", "- name: Agent!", 1),
				`deploy.yaml:21: DaemonSet shop/trireme: .*spec\.template\.spec\.containers\[0\]\.name: Invalid value: "Agent!"`},
			{"unsupported value", strings.Replace(validManifest, "mountPropagation: HostToContainer", "mountPropagation: Sideways", 1),
				`deploy.yaml:21: DaemonSet shop/trireme: .*mountPropagation: Unsupported value: "Sideways"`},
			{"duplicate field", strings.Replace(validManifest, "kind: ServiceAccount", "kind: ServiceAccount\nkind: ServiceAccount", 1),
				`^deploy.yaml:1: yaml: unmarshal errors: line 3: key "kind" already set in map$`},
			{"duplicate field in a later document", strings.Replace(validManifest, "  name: trireme-agent", "  name: trireme-agent\n  name: again", 1),
				`^deploy.yaml:7: yaml: unmarshal errors: line 11: key "name" already set in map$`},
			{"unknown kind", "apiVersion: v1\nkind: Gadget\nmetadata: {name: x}\n", `deploy.yaml:1: Gadget x: .*no matches for kind`},
			{"missing namespace", strings.ReplaceAll(validManifest, "namespace: shop", "namespace: nowhere"),
				`deploy.yaml:1: ServiceAccount nowhere/trireme: .*not found`},
			{"no objects", "# nothing\n---\n", `deploy.yaml: no objects`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				err := ValidateManifests(ctx, cp.Config, "deploy.yaml", []byte(tc.manifest))
				if err == nil {
					t.Fatal("accepted")
				}
				if !matches(tc.want, err.Error()) {
					t.Fatalf("error %q does not match %q", err, tc.want)
				}
			})
		}
	})
}

// validManifest is shaped like the future deploy manifests: a service
// account, a read-only ClusterRole and a privileged host-network DaemonSet.
const validManifest = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: trireme
  namespace: shop
--- # the agent reads what it enforces
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: trireme-agent
rules:
- apiGroups: [""]
  resources: [pods, namespaces]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
---

# comment before the object
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: trireme
  namespace: shop
spec:
  selector:
    matchLabels: {app: trireme}
  template:
    metadata:
      labels: {app: trireme}
    spec:
      serviceAccountName: trireme
      hostNetwork: true
      containers:
      - name: agent
        image: example.invalid/trireme:test
        securityContext:
          privileged: true
        volumeMounts:
        - name: netns
          mountPath: /var/run/netns
          mountPropagation: HostToContainer
      volumes:
      - name: netns
        hostPath: {path: /var/run/netns}
`

func matches(pattern, s string) bool { return regexp.MustCompile(pattern).MatchString(s) }

func mustHandler(t *testing.T, inf cache.SharedIndexInformer, e *events) {
	t.Helper()
	if _, err := inf.AddEventHandler(e.handler()); err != nil {
		t.Fatal(err)
	}
}

// TestAPIServerRestart stops and restarts kube-apiserver over the same
// etcd: clients fail while it is down, the data survives, and an informer
// resumes its watch and sees what was written after the restart.
func TestAPIServerRestart(t *testing.T) {
	cp := Start(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := cp.Client()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "before"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	factory := informers.NewSharedInformerFactory(c, 0)
	nsEvents := newEvents()
	mustHandler(t, factory.Core().V1().Namespaces().Informer(), nsEvents)
	factory.Start(ctx.Done())
	t.Cleanup(func() { cancel(); factory.Shutdown() })
	nsEvents.wait(t, "add /before")

	_, apiPID := cp.Processes()
	stop := time.Now()
	cp.StopAPIServer()
	t.Logf("kube-apiserver stopped in %v", time.Since(stop).Round(time.Millisecond))
	if _, err := c.CoreV1().Namespaces().Get(ctx, "before", metav1.GetOptions{}); err == nil {
		t.Fatal("the API server answers while stopped")
	}
	if err := syscall.Kill(apiPID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("kube-apiserver pid %d after stop: %v", apiPID, err)
	}
	start := time.Now()
	cp.StartAPIServer()
	t.Logf("kube-apiserver restarted in %v", time.Since(start).Round(time.Millisecond))
	if _, err := c.CoreV1().Namespaces().Get(ctx, "before", metav1.GetOptions{}); err != nil {
		t.Fatalf("data across the restart: %v", err)
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "after"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nsEvents.wait(t, "add /after")
}

// TestCleanup checks that a control plane survives the end of the thread
// that started it, and what it leaves once its test ended: no process, no
// listening port, no directory.
func TestCleanup(t *testing.T) {
	Binaries(t) // skip here, not only in the subtest
	var etcdPID, apiPID int
	var dir, url string
	t.Run("run", func(t *testing.T) {
		cp := Start(t, Options{})
		etcdPID, apiPID = cp.Processes()
		dir, url = cp.Dir, cp.URL
		if etcdPID == 0 || apiPID == 0 {
			t.Fatalf("pids %d %d", etcdPID, apiPID)
		}
		// Threads ended by goroutines that exit locked (as namespace code
		// does) must not take the processes with them (Pdeathsig).
		for range 64 {
			done := make(chan struct{})
			go func() { runtime.LockOSThread(); close(done) }()
			<-done
		}
		time.Sleep(200 * time.Millisecond)
		if err := cp.readyz(); err != nil {
			t.Fatalf("kube-apiserver after thread exits: %v", err)
		}
		if err := cp.etcdHealthy(); err != nil {
			t.Fatalf("etcd after thread exits: %v", err)
		}
	})
	for _, pid := range []int{etcdPID, apiPID} {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("pid %d still exists after cleanup (%v)", pid, err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after cleanup (%v)", dir, err)
	}
	if conn, err := net.Dial("tcp", strings.TrimPrefix(url, "https://")); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections after cleanup", url)
	}
}

// TestCacheKeyMatchesBuildScript: the package finds the directory the
// build script fills (both hash the same files).
func TestCacheKeyMatchesBuildScript(t *testing.T) {
	tools, err := findToolsModule()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(tools, "build.sh"), "--print-dir").Output()
	if err != nil {
		t.Fatal(err)
	}
	want, err := CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != want {
		t.Fatalf("build.sh --print-dir = %s, CacheDir() = %s", got, want)
	}
}

// BenchmarkStart measures a control plane's start to ready (its stop is
// outside the timer), and the memory both processes hold once ready:
// go test -run '^$' -bench Start -benchtime 5x ./testenv/controlplane
func BenchmarkStart(b *testing.B) {
	var etcdRSS, apiRSS int64
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		b.StartTimer()
		cp := Start(b, Options{})
		b.StopTimer()
		e, a := cp.RSS()
		etcdRSS, apiRSS = etcdRSS+e, apiRSS+a
		cp.stop()
	}
	b.ReportMetric(float64(etcdRSS)/float64(b.N)/(1<<20), "etcd-MB")
	b.ReportMetric(float64(apiRSS)/float64(b.N)/(1<<20), "apiserver-MB")
}
