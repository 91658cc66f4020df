package node

import (
	"testing"

	"github.com/trireme-go/trireme/policy"
)

// TestPolicyDigest: the digest that tells a restarted daemon whether the
// policy changed while it was down is the same for the same content and
// differs for any change, targets included.
func TestPolicyDigest(t *testing.T) {
	compile := func(text string) *policy.Engine {
		t.Helper()
		set, err := policy.Parse("p.yaml", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		e, err := policy.Compile(set)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	const base = `
targetNetworks: [10.0.0.0/8]
policies:
  - name: db
    selector: app=db
    ingress: [{from: [{selector: app=web}], ports: [tcp/5432], action: allow}]
`
	a, b := policyDigest(compile(base)), policyDigest(compile(base))
	if a == "" || a != b {
		t.Fatalf("same content: %q and %q", a, b)
	}
	for _, changed := range []string{
		`
targetNetworks: [10.0.0.0/8]
policies:
  - name: db
    selector: app=db
    ingress: [{from: [{selector: app=nobody}], ports: [tcp/5432], action: allow}]
`, `
targetNetworks: [10.0.0.0/16]
policies:
  - name: db
    selector: app=db
    ingress: [{from: [{selector: app=web}], ports: [tcp/5432], action: allow}]
`} {
		if d := policyDigest(compile(changed)); d == "" || d == a {
			t.Errorf("changed content, same digest: %s", changed)
		}
	}
	if policyDigest(nil) != "" {
		t.Error("no policy: want no digest")
	}
}
