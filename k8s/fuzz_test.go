package k8s

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/trireme-go/trireme/policy"
)

// FuzzDecode feeds hostile manifests to the loader and the translation: no
// panic; whatever translates prints as a policy file that parses back.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(universe))
	f.Add([]byte(universe + "---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: http}, {port: 80, endPort: 90, protocol: UDP}], from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [a]}]}}]}]\n  egress: [{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: http}]}]\n"))
	f.Add([]byte("kind: List\napiVersion: v1\nitems: [null, 1, {kind: List, items: [{kind: Pod}]}]"))
	f.Add([]byte("---\n---\n--- #x\nkind: Namespace\napiVersion: v1\nmetadata: {name: x}\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Add([]byte("{\"kind\": \"Pod\", \"apiVersion\": \"v1\", \"metadata\": {\"name\": \"a\"}, \"status\": {\"podIPs\": [{\"ip\": \"::1\"}]}}"))
	for _, name := range []string{"namespaces.yaml", "pods.yaml", "policies.yaml"} {
		if data, err := os.ReadFile(filepath.Join("..", "examples", "k8s", name)); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &Cluster{}
		if err := c.Decode("fuzz.yaml", data); err != nil {
			return
		}
		tr, err := Translate(c, Options{})
		if err != nil {
			return
		}
		text, err := MarshalSet(tr.Set)
		if err != nil {
			t.Fatalf("translated set does not print: %v", err)
		}
		set, err := policy.Parse("printed.yaml", text)
		if err != nil {
			t.Fatalf("printed policy does not parse: %v\n%s", err, text)
		}
		if _, err := policy.Compile(set); err != nil {
			t.Fatalf("printed policy does not compile: %v", err)
		}
	})
}
