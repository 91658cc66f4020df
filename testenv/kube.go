package testenv

import (
	"context"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Kubernetes scenes: a node's daemon runs in the node namespace, where the
// test control plane (on the machine's loopback) cannot be reached. A
// proxy listening on the node's own loopback forwards to it, and the node
// gets a kubeconfig naming that proxy.

// APIProxy forwards TCP connections from 127.0.0.1 in the node namespace to
// the API server at server (https://127.0.0.1:PORT), until the test ends.
// It returns the proxy's address in the node. While the API server is
// stopped, connections through the proxy are closed at once (as refused).
func (n *Node) APIProxy(server string) string {
	n.t.Helper()
	u, err := url.Parse(server)
	if err != nil {
		n.t.Fatal(err)
	}
	var ln net.Listener
	n.MustDo(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0") // the socket stays in the node namespace
		return err
	})
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = true
		} else {
			delete(conns, c)
		}
	}
	n.t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// A plain goroutine dials from the test's own namespace.
				up, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
				if err != nil {
					return
				}
				defer up.Close()
				track(c, true)
				track(up, true)
				defer track(c, false)
				defer track(up, false)
				done := make(chan struct{}, 2)
				go func() { io.Copy(up, c); done <- struct{}{} }()
				go func() { io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}

// Kubeconfig writes a kubeconfig for a process in the node namespace: the
// credential of cfg (client certificate, CA, impersonation) with the API
// server reached through proxy (APIProxy). It returns the file's path.
func (n *Node) Kubeconfig(cfg *rest.Config, proxy string) string {
	n.t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: "https://" + proxy, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData,
		Impersonate: cfg.Impersonate.UserName, ImpersonateGroups: cfg.Impersonate.Groups}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	path := filepath.Join(n.t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		n.t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		n.t.Fatal(err)
	}
	return path
}

// PodSpec is a pod a test puts on a node: what a scheduler and a kubelet
// would have done (spec.nodeName, status.podIP, phase Running) done by hand.
type PodSpec struct {
	Namespace, Name string
	Labels          map[string]string
	NodeName        string
	IP              netip.Addr
	// Ports are the container's ports (name may be "").
	Ports []corev1.ContainerPort
}

// CreatePod creates the pod through the API and sets its status as a
// kubelet would once its network is up.
func CreatePod(t testing.TB, c kubernetes.Interface, p PodSpec) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	o := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels},
		Spec: corev1.PodSpec{NodeName: p.NodeName, Containers: []corev1.Container{{Name: "c", Image: "scratch", Ports: p.Ports}},
			TerminationGracePeriodSeconds: new(int64)},
	}
	o, err := c.CoreV1().Pods(p.Namespace).Create(ctx, o, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	o.Status.Phase = corev1.PodRunning
	o.Status.PodIP = p.IP.String()
	o.Status.PodIPs = []corev1.PodIP{{IP: p.IP.String()}}
	o, err = c.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, o, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("status of pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	return o
}

// DeletePod deletes a pod at once (grace period 0: there is no kubelet to
// confirm it stopped).
func DeletePod(t testing.TB, c kubernetes.Interface, namespace, name string) {
	t.Helper()
	if err := c.CoreV1().Pods(namespace).Delete(context.Background(), name, *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatalf("delete pod %s/%s: %v", namespace, name, err)
	}
}

// CreateNamespace creates a namespace with labels.
func CreateNamespace(t testing.TB, c kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	_, err := c.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}
