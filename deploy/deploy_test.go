package deploy_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv/controlplane"
	"github.com/trireme-go/trireme/testenv/dockerenv"
)

var manifests = []string{"trireme.yaml", "secret-psk.yaml", "secret-ca.yaml", "purge.yaml"}

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("kubernetes", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// documents splits a manifest into its YAML documents.
func documents(data []byte) [][]byte {
	var out [][]byte
	for _, d := range strings.Split(string(data), "\n---\n") {
		out = append(out, []byte(d))
	}
	return out
}

// TestManifests has a real API server validate every manifest
// (server-side apply, dry run, strict fields: `kubectl apply --dry-run=server`),
// applies the RBAC objects and checks that the agent's service account may
// read exactly what it watches and nothing else, and parses the
// ConfigMap's config with the daemon's own parser.
func TestManifests(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	c := cp.Client()
	ctx := context.Background()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "trireme-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, m := range manifests {
		if err := controlplane.ValidateManifests(ctx, cp.Config, m, read(t, m)); err != nil {
			t.Errorf("%v", err)
		}
	}
	// A broken copy is refused: the check is not a formality.
	bad := strings.Replace(string(read(t, "trireme.yaml")), "hostNetwork: true", "hostNetwork: true\n      hostNetwrk: true", 1)
	if err := controlplane.ValidateManifests(ctx, cp.Config, "bad.yaml", []byte(bad)); err == nil || !strings.Contains(err.Error(), "hostNetwrk") {
		t.Errorf("a manifest with an unknown field: %v", err)
	}

	// RBAC: create the role and binding, then ask the API server what the
	// service account may do.
	var cm *corev1.ConfigMap
	for _, doc := range documents(read(t, "trireme.yaml")) {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "ClusterRole":
			var r rbacv1.ClusterRole
			if err := yaml.UnmarshalStrict(doc, &r); err != nil {
				t.Fatal(err)
			}
			if _, err := c.RbacV1().ClusterRoles().Create(ctx, &r, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		case "ClusterRoleBinding":
			var b rbacv1.ClusterRoleBinding
			if err := yaml.UnmarshalStrict(doc, &b); err != nil {
				t.Fatal(err)
			}
			if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &b, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		case "ConfigMap":
			cm = &corev1.ConfigMap{}
			if err := yaml.UnmarshalStrict(doc, cm); err != nil {
				t.Fatal(err)
			}
		}
	}
	// What the agent's service account may do: exactly what it watches.
	sa := controlplane.Subject{User: "system:serviceaccount:trireme-system:trireme",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:trireme-system", "system:authenticated"}}
	grants := []controlplane.Access{
		{Resource: "pods", Verb: "list"}, {Resource: "pods", Verb: "watch"}, {Resource: "pods", Verb: "get"},
		{Resource: "namespaces", Verb: "list"}, {Resource: "namespaces", Verb: "watch"},
		{Group: "networking.k8s.io", Resource: "networkpolicies", Verb: "list"}, {Group: "networking.k8s.io", Resource: "networkpolicies", Verb: "watch"},
	}
	refusals := []controlplane.Access{
		{Resource: "pods", Verb: "create"}, {Resource: "pods", Verb: "delete"}, {Resource: "pods", Verb: "update"},
		{Resource: "pods", Subresource: "status", Verb: "update"},
		{Group: "networking.k8s.io", Resource: "networkpolicies", Verb: "update"},
		{Resource: "secrets", Verb: "get"}, {Resource: "secrets", Verb: "list"},
		{Resource: "configmaps", Verb: "list"}, {Resource: "nodes", Verb: "list"},
	}
	if err := controlplane.CheckAccess(ctx, c, sa, grants, refusals); err != nil {
		t.Errorf("the agent's RBAC:\n%v", err)
	}

	// The ConfigMap's config is valid for the daemon (its secrets path
	// pointed at a key of the test's).
	if cm == nil {
		t.Fatal("no ConfigMap in trireme.yaml")
	}
	psk := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(psk, []byte(strings.Repeat("k", 40)), 0o600); err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(cm.Data["config.yaml"], "/etc/trireme/secrets/psk", psk)
	cfg, err := node.ParseConfig("config.yaml", []byte(text))
	if err != nil {
		t.Fatalf("the ConfigMap's config: %v", err)
	}
	if !cfg.Kubernetes.Enabled || cfg.Policy != "" || cfg.StateDir != "/var/lib/trireme" {
		t.Errorf("the ConfigMap's config: %+v", cfg)
	}
}

// TestImage builds deploy/kubernetes/Dockerfile with a Docker engine (a
// private one, nothing pulled) and runs the image: one layer holding the
// static binary, which starts and answers.
func TestImage(t *testing.T) {
	e := dockerenv.Start(t)
	bin, err := dockerenv.Binary()
	if err != nil {
		t.Fatal(err)
	}
	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	for _, f := range []struct {
		name string
		data []byte
		mode int64
	}{{"deploy/kubernetes/Dockerfile", read(t, "Dockerfile"), 0o644}, {"bin/trireme", bin, 0o755}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.data)
	}
	tw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tag := "trireme-deploy-test:" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	res, err := e.Client.ImageBuild(ctx, &ctxTar, client.ImageBuildOptions{Tags: []string{tag}, Dockerfile: "deploy/kubernetes/Dockerfile", Remove: true})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	out, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if bytes.Contains(out, []byte(`"error"`)) {
		t.Fatalf("build: %s", out)
	}
	img, err := e.Client.ImageInspect(ctx, tag)
	if err != nil {
		t.Fatalf("inspect %s: %v\n%s", tag, err, out)
	}
	if ep := img.Config.Entrypoint; len(ep) != 1 || ep[0] != "/trireme" {
		t.Errorf("entrypoint %v", ep)
	}
	if n := len(img.RootFS.Layers); n != 1 {
		t.Errorf("%d layers, want 1 (FROM scratch, the binary)", n)
	}
	t.Logf("image %s: %d bytes (binary %d)", tag, img.Size, len(bin))
	// It runs: the binary answers --help.
	cr, err := e.Client.ContainerCreate(ctx, client.ContainerCreateOptions{Config: &container.Config{Image: tag, Cmd: []string{"--help"}},
		HostConfig: &container.HostConfig{NetworkMode: "none"}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Client.ContainerRemove(context.Background(), cr.ID, client.ContainerRemoveOptions{Force: true})
	wait := e.Client.ContainerWait(ctx, cr.ID, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := e.Client.ContainerStart(ctx, cr.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-wait.Result:
		if r.StatusCode != 0 {
			t.Errorf("trireme --help in the image exited %d", r.StatusCode)
		}
	case err := <-wait.Error:
		t.Fatal(err)
	}
	logs, err := e.Client.ContainerLogs(ctx, cr.ID, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	var help bytes.Buffer
	stdcopy.StdCopy(&help, &help, logs)
	logs.Close()
	if !strings.Contains(help.String(), "daemon") {
		t.Errorf("trireme --help in the image: %q", help.String())
	}
}
