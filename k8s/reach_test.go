package k8s

import (
	"net/netip"
	"testing"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
)

// Reach decides as the enforcers do (policy.Engine.Decide), with the target
// and excluded networks of the translation: x/web may reach x/db on 5432. A
// pod in the excluded networks is let through by its peers unchecked, so
// their answers carry no token (missing-token at its own enforcer); a pod
// outside the target networks is matched by address (selector rules cannot
// allow it). UDP is decided with identity (the policy's intent).
func TestReachNetworks(t *testing.T) {
	c := &Cluster{}
	if err := c.Decode("universe.yaml", []byte(universe)); err != nil {
		t.Fatal(err)
	}
	const pols = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}, {port: 5432, protocol: UDP}]}]
`
	if err := c.Decode("policies.yaml", []byte(pols)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name             string
		opts             Options
		proto            ipproto.Proto
		webToDB, dnsToDB string // "." allowed, else the refusing half and its reason
	}{
		{"pods are the target networks", Options{}, ipproto.TCP, ".", "ingress:policy-denied"},
		{"udp with identity", Options{}, ipproto.UDP, ".", "ingress:policy-denied"},
		{"other protocol", Options{}, ipproto.SCTP, "ingress:policy-denied", "ingress:policy-denied"},
		{"excluded client", Options{ExcludedNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.1.3/32")}}, ipproto.TCP, ".", "egress:missing-token"},
		{"client outside the target networks", Options{TargetNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.1.2/32")}}, ipproto.TCP, "ingress:policy-denied", "ingress:policy-denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := Translate(c, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			e, err := policy.Compile(tr.Set)
			if err != nil {
				t.Fatal(err)
			}
			m := Reach(e, tr.PUs, tc.proto, 5432)
			idx := func(id string) int {
				for i := range tr.PUs {
					if tr.PUs[i].ID() == id {
						return i
					}
				}
				t.Fatalf("no pod %s", id)
				return -1
			}
			db := idx("x/db")
			for from, want := range map[string]string{"x/web": tc.webToDB, "x/dns": tc.dnsToDB} {
				cell := &m.Cells[idx(from)][db]
				got := "."
				switch {
				case !cell.Ingress.Allowed():
					got = "ingress:" + cell.Ingress.Reason.String()
				case !cell.Egress.Allowed():
					got = "egress:" + cell.Egress.Reason.String()
				}
				if got != want {
					t.Errorf("%s -> x/db: %s, want %s (ingress %+v)", from, got, want, cell.Ingress)
				}
			}
		})
	}
}
